"""Routing on the real stack: a model whose Triton model is down is answered by the catalogue's next one,
explicitly asked for or chosen by auto, and the routing events say why and what load they saw."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from conflux.config import Settings
from tests.integration.helpers import new_tenant_key_sync
from tests.integration.test_conversation import events_of

HI: Any = [{"role": "user", "content": "alpha beta gamma"}]


@pytest.fixture(scope="module")
def client(stack: Settings) -> openai.OpenAI:
    _, key = new_tenant_key_sync(stack, "pro")
    return openai.OpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", api_key=key, timeout=90, max_retries=0)


def _routing(stack: Settings, request_id: str, since_ms: int) -> list[dict[str, Any]]:
    import asyncio

    found = asyncio.run(events_of(stack, request_id, since_ms, ("routing.decisions",), want=1))
    return found.get("routing.decisions", [])


@pytest.fixture
def echo_paced_unloaded(stack: Settings) -> Iterator[None]:
    """echo_paced taken down in Triton (repository API), and loaded again afterwards."""
    base = f"http://127.0.0.1:{stack.triton_http_port}/v2/repository/models/echo_paced"
    assert httpx.post(f"{base}/unload", timeout=30).status_code == 200
    try:
        yield
    finally:
        assert httpx.post(f"{base}/load", timeout=60).status_code == 200
        deadline = time.monotonic() + 30
        while httpx.get(f"{base.replace('/repository', '')}/ready", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, "echo_paced did not come back"
            time.sleep(0.5)


def test_an_explicit_model_that_is_down_is_answered_by_its_fallback(stack: Settings, client: openai.OpenAI,
                                                                    echo_paced_unloaded: None) -> None:
    # At once (the worker may still believe it served: inference fails before the first token) and after the
    # worker's view of what is served has refreshed (routing skips it): both fall back, and say why.
    for wait_s in (0.0, 6.0):
        time.sleep(wait_s)
        since = int(time.time() * 1000)
        r = client.chat.completions.create(model="echo-paced", messages=HI, max_tokens=3)
        assert r.model == "echo" and r.choices[0].message.content == "alpha beta gamma"
        decisions = _routing(stack, r.id, since)
        assert decisions and decisions[-1]["chosen_model"] == "echo", decisions
        assert decisions[-1]["reason"].startswith("fallback from echo-paced: "), decisions


def test_a_model_absent_from_this_deployment_falls_back(stack: Settings, client: openai.OpenAI) -> None:
    """llama-3.1-8b-instruct runs only on GPU deployments; here its Triton model does not exist."""
    since = int(time.time() * 1000)
    r = client.chat.completions.create(model="llama-3.1-8b-instruct", messages=HI, max_tokens=3, temperature=0)
    assert r.model == "qwen2.5-coder-1.5b-instruct" and r.choices[0].message.content  # its first fallback
    [decision] = _routing(stack, r.id, since)
    assert decision["reason"] == "fallback from llama-3.1-8b-instruct: not being served"
    # auto would take it for a hard request: it takes the next strongest, and says what was down.
    since = int(time.time() * 1000)
    hard = client.chat.completions.create(model="auto", max_tokens=3, temperature=0, messages=[
        {"role": "user", "content": "Prove that the algorithm terminates, step by step."}])
    assert hard.model == "qwen2.5-coder-1.5b-instruct"
    [auto] = _routing(stack, hard.id, since)
    assert "not served now: llama-3.1-8b-instruct" in auto["reason"], auto


def test_each_decision_records_the_load_it_saw(stack: Settings, client: openai.OpenAI) -> None:
    """From Triton's own metrics (conflux/triton_load.py), sampled by the worker about every second in the
    background: a first request starts the sampling, the next one sees it."""
    client.chat.completions.create(model="auto", messages=HI, max_tokens=1, temperature=0)
    time.sleep(1.5)
    since = int(time.time() * 1000)
    r = client.chat.completions.create(model="auto", messages=HI, max_tokens=2, temperature=0)
    [decision] = _routing(stack, r.id, since)
    seen = {entry["model"]: entry for entry in decision["load"]}
    assert set(seen) == set(decision["candidates"]) and "smollm2-135m-instruct" in seen, decision
    smol = seen["smollm2-135m-instruct"]
    assert smol["pending"] >= 0 and smol["queue_ms"] >= 0 and smol["wait_ms"] >= smol["queue_ms"]
