"""Grounded answers on the real stack (issue 14): a pro tenant's question about its own document goes to the
stronger model and says why, is answered from the source, names the chunk it used, and is scored on
quality.scores; a greeting stays on the small model with no sources at all."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from conflux.config import Settings
from conflux.ingest import ingest_paths
from conflux.vectorstore import open_vector_store
from tests.integration.helpers import new_tenant_key
from tests.integration.test_conversation import events_of

TOPICS = ("prompt.built", "routing.decisions", "chat.responses", "quality.scores")


async def _ask(stack: Settings, key: str, text: str) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    since = int(time.time() * 1000) - 1000
    async with httpx.AsyncClient(timeout=120) as http:
        r = await http.post(f"http://127.0.0.1:{stack.edge_port}/v1/chat/completions",
                            headers={"Authorization": f"Bearer {key}"},
                            json={"model": "auto", "max_tokens": 40, "temperature": 0,
                                  "messages": [{"role": "user", "content": text}]})
    assert r.status_code == 200, r.text
    body = r.json()
    return body, await events_of(stack, body["id"], since, TOPICS, want=len(TOPICS))


async def test_a_grounded_question_goes_to_the_1p5b_qwen_cites_its_chunk_and_is_scored(stack: Settings,
                                                                                     tmp_path: Any) -> None:
    tenant, key = await new_tenant_key(stack, "pro")
    (tmp_path / "returns.md").write_text("Returns policy. Returns are accepted within 45 days of delivery. "
                                         "Refunds go back to the original card.")
    await ingest_paths(stack, [str(tmp_path / "returns.md")], tenant, lambda m: None)
    store = open_vector_store(stack)
    try:
        for _ in range(60):  # indexing is asynchronous
            if store.count("documents", tenant) > 0:
                break
            await asyncio.sleep(0.5)
    finally:
        store.close()

    body, events = await _ask(stack, key, "Within how many days of delivery are returns accepted?")
    answer = body["choices"][0]["message"]["content"]
    routed, = events["routing.decisions"]
    assert body["model"] == "qwen2.5-coder-1.5b-instruct" and "grounded in 1 source(s)" in routed["reason"], routed
    built, = events["prompt.built"]
    assert built["messages"][-1]["content"].endswith("Question: Within how many days of delivery are returns accepted?")
    assert "45" in answer, answer
    assert body["citations"] == built["context_chunk_ids"], (answer, body["citations"])  # the answer used it
    scored, = events["quality.scores"]
    assert scored["model"] == body["model"] and scored["sources"] == 1 and scored["cited"] == body["citations"]
    assert scored["grounded"] is not None and scored["grounded"] >= 0.5 and not scored["hallucinated"], scored

    body, events = await _ask(stack, key, "Hello! How are you today?")
    routed, = events["routing.decisions"]
    assert body["model"] == "smollm2-135m-instruct" and routed["reason"].startswith("auto: complexity 0,"), routed
    assert events["prompt.built"][0]["context_chunk_ids"] == []  # the policy is unrelated to a greeting
    scored, = events["quality.scores"]
    assert scored["sources"] == 0 and scored["grounded"] is None and not scored["hallucinated"]
