"""logprobs / top_logprobs and n through the real chain with the official openai client: the logprobs belong to
the text the caller got (streamed or not, cut by a stop sequence or not), and n choices are n generations, each
with its own events, only the first remembered as the conversation's turn."""

from __future__ import annotations

import time
from typing import Any

import openai
import pytest
import redis.asyncio as aioredis

from conflux.config import Settings
from tests.integration.helpers import new_tenant_key_sync
from tests.integration.test_conversation import events_of

SMOL = "smollm2-135m-instruct"
SEA: Any = [{"role": "user", "content": "Write one sentence about the sea."}]
ASK: Any = [{"role": "user", "content": "one two three four"}]  # the echo model cycles these words


@pytest.fixture(scope="module")
def tenant(stack: Settings) -> tuple[str, openai.OpenAI]:
    tenant_id, key = new_tenant_key_sync(stack, "pro")
    return tenant_id, openai.OpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", api_key=key, timeout=90)


def _token_text(entries: list[Any]) -> str:
    return b"".join(bytes(e.bytes) for e in entries).decode("utf-8", "replace")


def test_logprobs_cover_the_answer_token_by_token(tenant: tuple[str, openai.OpenAI]) -> None:
    _, client = tenant
    r = client.chat.completions.create(model=SMOL, messages=SEA, max_tokens=24, temperature=0, logprobs=True,
                                       top_logprobs=3)
    choice = r.choices[0]
    assert choice.logprobs is not None and choice.logprobs.content
    content = choice.logprobs.content
    assert _token_text(content) == choice.message.content
    assert r.usage and len(content) >= r.usage.completion_tokens  # usage counts pieces; a piece is 1+ tokens
    for e in content:
        assert len(e.top_logprobs) == 3 and e.logprob <= 0
        assert e.logprob == pytest.approx(e.top_logprobs[0].logprob)  # greedy: the most likely token was taken
    # without logprobs, none come back
    plain = client.chat.completions.create(model=SMOL, messages=SEA, max_tokens=4, temperature=0)
    assert plain.choices[0].logprobs is None


def test_streamed_logprobs_travel_with_their_text_and_stop_at_a_stop_sequence(
        tenant: tuple[str, openai.OpenAI]) -> None:
    _, client = tenant
    stream = client.chat.completions.create(model=SMOL, messages=SEA, max_tokens=40, temperature=0, logprobs=True,
                                            stop=["."], stream=True)
    text, entries = "", []
    for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
            entries += c.logprobs.content if c.logprobs and c.logprobs.content else []
    assert text and "." not in text
    # The tokens are those behind the text: their text starts with it, and runs past it by at most the
    # token that held the stop sequence.
    tokens = _token_text(entries)
    assert tokens.startswith(text) and len(tokens) - len(text) <= len(entries[-1].token)


def test_logprobs_from_a_model_without_them_are_refused(tenant: tuple[str, openai.OpenAI]) -> None:
    _, client = tenant
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="echo", messages=ASK, logprobs=True)
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "logprobs"
    # auto picks a model that has them
    r = client.chat.completions.create(model="auto", messages=ASK, max_tokens=4, logprobs=True)
    assert r.model == SMOL and r.choices[0].logprobs and r.choices[0].logprobs.content


async def test_n_choices_are_n_generations_with_their_own_events(stack: Settings,
                                                                tenant: tuple[str, openai.OpenAI]) -> None:
    tenant_id, client = tenant
    since = int(time.time() * 1000) - 1000
    raw = client.chat.completions.with_raw_response.create(model="echo", messages=ASK, n=3, max_tokens=6)
    r = raw.parse()
    conversation = raw.headers["x-conversation-id"]
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert all(c.message.content == "one two three four one two" and c.finish_reason == "length"
               for c in r.choices)
    assert r.usage and r.usage.completion_tokens == 3 * 6  # the prompt is counted once
    events = await events_of(stack, conversation, since, ("chat.requests", "chat.responses"), want=2,
                             field="conversation_id")
    requests = events["chat.requests"]
    assert sorted(e["choice"] for e in requests) == [0, 1, 2] and {e["choices"] for e in requests} == {3}
    assert len({e["envelope"]["request_id"] for e in requests}) == 3
    assert len(events["chat.responses"]) == 3
    # one turn remembered (the first choice's), not three
    r_client = aioredis.from_url(stack.redis_url)
    try:
        assert await r_client.llen(f"conflux:memory:{tenant_id}:{conversation}") == 2
    finally:
        await r_client.aclose()


def test_n_streamed_choices_interleave_each_with_its_index_and_end(tenant: tuple[str, openai.OpenAI]) -> None:
    _, client = tenant
    stream = client.chat.completions.create(model=SMOL, messages=SEA, n=2, max_tokens=16, seed=5, stream=True,
                                            stream_options={"include_usage": True})
    texts: dict[int, str] = {0: "", 1: ""}
    finished: dict[int, str] = {}
    usage = None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            texts[c.index] += c.delta.content or ""
            if c.finish_reason:
                finished[c.index] = c.finish_reason
    assert set(finished) == {0, 1} and texts[0] and texts[1]
    assert texts[0] != texts[1]  # seeds 5 and 6: two samples, not one answer twice
    assert usage is not None and usage.completion_tokens <= 2 * 16
