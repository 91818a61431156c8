"""The agent loop through the real chain (SmolLM2 on llama.cpp in Triton): a chat that asks for a built-in tool
gets it run by the worker, sees the step as an SSE comment line (which the official openai client skips), never
as a tool-call delta, and gets an answer; the step is on tool.calls and tool.results (server = true) and usage
counts every step."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx
import openai
import pytest

from conflux.config import Settings
from tests.integration.helpers import new_tenant_key_sync
from tests.integration.test_conversation import events_of

MODEL = "smollm2-135m-instruct"
ASK: Any = [{"role": "user", "content": "What is 12 times 7? Use the calculator."}]
STEP = ": conflux.tool_step "
# Tokens enough for any call the grammar allows to end (calculator.MAX_CHARS of expression, one character a token
# at worst, and the envelope): cut short, a 135M model's call would be whatever it happened to write first.
CALL_ROOM = 160


@pytest.fixture(scope="module")
def key(stack: Settings) -> str:
    return new_tenant_key_sync(stack, "pro")[1]


def _stream(stack: Settings, key: str, body: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(steps, data chunks) of a streamed chat, read as raw SSE."""
    steps, chunks = [], []
    with httpx.stream("POST", f"http://127.0.0.1:{stack.edge_port}/v1/chat/completions", timeout=180,
                      headers={"Authorization": f"Bearer {key}"}, json={**body, "stream": True}) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line.startswith(STEP):
                steps.append(json.loads(line[len(STEP):]))
            elif line.startswith("data: {"):
                chunks.append(json.loads(line[6:]))
    return steps, chunks


async def test_a_server_tool_runs_in_the_worker_and_the_caller_sees_the_step(stack: Settings, key: str) -> None:
    since = int(time.time() * 1000) - 1000
    steps, chunks = _stream(stack, key, {
        "model": MODEL, "messages": ASK, "server_tools": ["calculator"], "tool_choice": "required",
        "temperature": 0, "max_tokens": CALL_ROOM, "stream_options": {"include_usage": True}})
    assert steps and steps[0]["step"] == 1
    call = steps[0]["calls"][0]
    assert call["name"] == "calculator" and call["id"].startswith("call_")
    assert isinstance(call["ok"], bool) and call["result"]  # a value, or the reason the expression was refused
    deltas = [d for c in chunks for ch in c.get("choices", []) for d in [ch.get("delta") or {}]]
    assert not any(d.get("tool_calls") for d in deltas), "a built-in tool's call reached the client as a delta"
    finish = [ch["finish_reason"] for c in chunks for ch in c.get("choices", []) if ch.get("finish_reason")]
    assert finish and finish[-1] in ("stop", "length")
    usage = next(c["usage"] for c in chunks if c.get("usage"))
    request_id = chunks[0]["id"]

    found = await events_of(stack, request_id, since, ("tool.calls", "tool.results", "inference.completed"), want=3)
    made = [e for e in found["tool.calls"] if e["server"]]
    results = [e for e in found["tool.results"] if e["server"]]
    assert [m["call_id"] for m in made] == [r["call_id"] for r in results] and made[0]["call_id"] == call["id"]
    assert results[0]["name"] == "calculator" and results[0]["ok"] == call["ok"]
    assert results[0]["latency_ms"] is not None and results[0]["latency_ms"] >= 0
    generations = found["inference.completed"]
    assert len(generations) >= 2  # the step that called the tool, then the answer
    assert usage["completion_tokens"] == sum(g["completion_tokens"] for g in generations)
    assert usage["prompt_tokens"] == sum(g["prompt_tokens"] for g in generations)


def test_the_official_client_skips_the_step_lines(stack: Settings, key: str) -> None:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", api_key=key, timeout=180)
    stream = client.chat.completions.create(model=MODEL, messages=ASK, tool_choice="required", temperature=0,
                                            max_tokens=30, stream=True, extra_body={"server_tools": ["calculator"]})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    whole = client.chat.completions.create(model=MODEL, messages=ASK, tool_choice="required", temperature=0,
                                           max_tokens=30, extra_body={"server_tools": ["calculator"]})
    assert not whole.choices[0].message.tool_calls and whole.choices[0].finish_reason in ("stop", "length")


def test_an_unknown_server_tool_is_refused_by_name(stack: Settings, key: str) -> None:
    resp = httpx.post(f"http://127.0.0.1:{stack.edge_port}/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": MODEL, "messages": ASK, "server_tools": ["shell"]})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "server_tools"
    assert "shell" in resp.json()["error"]["message"]
    echo = httpx.post(f"http://127.0.0.1:{stack.edge_port}/v1/chat/completions", timeout=30,
                      headers={"Authorization": f"Bearer {key}"},
                      json={"model": "echo", "messages": ASK, "server_tools": ["calculator"]})
    assert echo.status_code == 400 and echo.json()["error"]["param"] == "server_tools"  # echo cannot call tools


def test_a_tenants_default_tools_run_unless_the_chat_opts_out(stack: Settings) -> None:
    tenant, key = new_tenant_key_sync(stack, "pro")
    set_tools = subprocess.run([sys.executable, "-m", "conflux.cli", "tenants", "set-tools", "--tenant", tenant,
                                "--default-tools", "calculator"], capture_output=True, text=True, timeout=60)
    assert set_tools.returncode == 0, set_tools.stderr
    body = {"model": MODEL, "messages": ASK, "temperature": 0, "max_tokens": CALL_ROOM}
    steps, _ = _stream(stack, key, {**body, "tool_choice": "required"})  # names no server_tools: gets the default
    assert steps and steps[0]["calls"][0]["name"] == "calculator"
    opted_out, chunks = _stream(stack, key, {**body, "server_tools": []})
    assert not opted_out and "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    # A model that cannot constrain its output answers as before, not with a refusal the tenant's default caused.
    _, echoed = _stream(stack, key, {"model": "echo", "messages": [{"role": "user", "content": "plain echo"}],
                                     "max_tokens": 2})
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in echoed if c["choices"]) == "plain echo"
