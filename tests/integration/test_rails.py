"""Parallel rails on the real engines (streams/pipeline.py): prompt build, routing (with its budget hold) and, with
generate_before_verdict, the generation itself run while the input verdict is still pending, and nothing of the
answer (a chunk, an event, a charge) leaves until the verdict allows it. A verdict held back until the answer has
gone as far as it may, and then 0.3 s more, decides what the caller gets."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from conflux.budget import Limit, window
from conflux.config import Settings
from conflux.serde import new_envelope
from streams import input_safety, pipeline
from streams.app import build_deps
from streams.deps import Deps
from tests.integration.helpers import new_tenant_key

PROMPT = "one two three four five six"


async def _chunks(settings: Settings, topic: str, request_id: str, deps: Deps) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    chunks: list[dict[str, Any]] = []
    try:
        while not chunks or not chunks[-1]["is_final"]:
            batch = await consumer.getmany(timeout_ms=5000)
            assert batch, f"no final chunk for {request_id} on {topic}"
            chunks += [deps.serde.decode(m.value).record for msgs in batch.values() for m in msgs
                       if m.key == request_id.encode()]
    finally:
        await consumer.stop()
    return chunks


async def _answer_with_verdict(settings: Settings, reply_topic: str, verdict: str, ahead: bool,
                               monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """One request through the real pipeline whose input verdict comes only once the answer has gone as far as
    it may before it (`ahead`: generated; otherwise routed, its budget held) and has waited 0.3 s more; what had
    left by then, and what left in the end."""
    tenant, _ = await new_tenant_key(settings, "pro")
    rid = f"rails-{uuid.uuid4().hex}"
    limit = Limit(f"tenant:{tenant}", window("day", dt.datetime.now(dt.UTC)), None, 1_000_000)
    deps = await build_deps(settings, f"rails-w-{uuid.uuid4().hex[:8]}")
    deps.generate_before_verdict = ahead
    published: list[str] = []
    chunk_sends: list[int] = []
    routed, generated, opened, closed = asyncio.Event(), asyncio.Event(), asyncio.Event(), asyncio.Event()

    enqueue, send, stream, reserve = deps.publisher.enqueue, deps.producer.send, deps.triton.stream, \
        deps.budgets.reserve

    async def recorded_reserve(*args: Any) -> Any:
        short = await reserve(*args)
        routed.set()
        return short

    async def recorded_enqueue(topic: str, record: dict[str, Any], key: str | None = None) -> Any:
        if record["envelope"]["request_id"] == rid:
            published.append(topic)
        return await enqueue(topic, record, key=key)

    async def recorded_send(topic: str, **kwargs: Any) -> Any:
        if topic == reply_topic:
            chunk_sends.append(1)
        return await send(topic, **kwargs)

    async def watched_stream(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        opened.set()
        try:
            async for piece in stream(*args, **kwargs):
                yield piece
            generated.set()  # every piece read: the answer now waits at the gate
        finally:
            closed.set()

    real_check = input_safety.check

    async def late_check(d: Deps, rc: Any) -> str:
        await real_check(d, rc)  # records the verdict event as usual
        await asyncio.wait_for((generated if ahead else routed).wait(), 20)
        await asyncio.sleep(0.3)
        seen["at_verdict"] = (list(published), len(chunk_sends))
        seen["held_at_verdict"] = (await deps.budgets.report([limit]))[0]["held_tokens"]
        seen["opened_at_verdict"] = opened.is_set()
        return verdict

    seen: dict[str, Any] = {}
    monkeypatch.setattr(deps.publisher, "enqueue", recorded_enqueue)
    monkeypatch.setattr(deps.producer, "send", recorded_send)
    monkeypatch.setattr(deps.triton, "stream", watched_stream)
    monkeypatch.setattr(deps.budgets, "reserve", recorded_reserve)
    monkeypatch.setattr(input_safety, "check", late_check)
    request = {
        "envelope": new_envelope(tenant_id=tenant, conversation_id=f"c-{rid}", request_id=rid, producer="test"),
        "model": "echo", "messages": [{"role": "user", "content": PROMPT, "name": None, "tool_call_id": None,
                                       "tool_calls": None}],
        "stream": True, "max_tokens": 4, "temperature": 0.0, "top_p": None, "seed": None, "presence_penalty": None,
        "frequency_penalty": None, "stop": [], "reply_topic": reply_topic, "reply_partition": 0, "user": None,
        "metadata": {}, "tools": None, "tool_choice": None, "parallel_tool_calls": True, "server_tools": None,
        "response_format": None, "top_logprobs": None, "choices": 1, "choice": 0, "key_id": "k1",
        "budgets": [limit.record()]}
    try:
        await asyncio.wait_for(pipeline.handle(deps, request), 30)
        return {**seen, "published": published, "opened": opened.is_set(), "closed": closed.is_set(),
                "chunks": await _chunks(settings, reply_topic, rid, deps),
                "claim": await deps.redis.exists(f"conflux:once:gen:{rid}"),
                "budget": await deps.budgets.report([limit])}
    finally:
        await deps.producer.stop()
        await deps.redis.aclose()


@pytest.mark.parametrize("ahead", [False, True], ids=["routed", "generated"])
async def test_a_block_after_the_answer_went_ahead_sends_only_the_refusal(
        stack: Settings, scratch_topic: str, monkeypatch: pytest.MonkeyPatch, ahead: bool) -> None:
    out = await _answer_with_verdict(stack, scratch_topic, "BLOCK", ahead, monkeypatch)
    assert out["at_verdict"] == (["safety.verdicts"], 0)  # nothing of the answer had left
    assert out["held_at_verdict"] > 0  # routing had run: the budget held the request's worst case
    assert out["opened_at_verdict"] is ahead  # without generate_before_verdict, no model stream before it
    # The block dropped the answer where it waited: the caller gets the refusal alone, and the record is what
    # it was when the stages ran one after another (no retrieval, prompt, routing or inference events).
    assert [(c["text"], c["finish_reason"], c["is_final"]) for c in out["chunks"]] == [
        (input_safety.REFUSAL, "content_filter", True)]
    assert out["published"] == ["safety.verdicts", "chat.responses"]
    assert out["opened"] is ahead and out["closed"] is ahead and not out["claim"]
    [budget] = out["budget"]
    assert budget["held_tokens"] == 0 and budget["spent_tokens"] == 0  # the routing stage's hold, released


@pytest.mark.parametrize("ahead", [False, True], ids=["routed", "generated"])
async def test_an_allow_after_the_answer_went_ahead_sends_it_whole_and_records_every_stage(
        stack: Settings, scratch_topic: str, monkeypatch: pytest.MonkeyPatch, ahead: bool) -> None:
    out = await _answer_with_verdict(stack, scratch_topic, "ALLOW", ahead, monkeypatch)
    assert out["at_verdict"] == (["safety.verdicts"], 0) and out["held_at_verdict"] > 0
    assert out["opened_at_verdict"] is ahead
    assert "".join(c["text"] for c in out["chunks"]) == "one two three four"
    assert out["chunks"][-1]["is_final"] and out["chunks"][-1]["finish_reason"] == "length"
    published = out["published"]
    assert published[0] == "safety.verdicts"
    assert published.index("routing.decisions") < published.index("inference.requests") \
        < published.index("inference.completed") < published.index("chat.responses")
    [budget] = out["budget"]
    assert budget["held_tokens"] == 0 and budget["spent_tokens"] > 0  # settled at what the answer used
