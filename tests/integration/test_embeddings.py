"""/v1/embeddings with the official openai client: the vectors match the reference MiniLM, both encodings,
batches in order, usage by MiniLM's tokenizer, refusals by name, limits before work, and an event per request."""

from __future__ import annotations

import time
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from conflux.config import Settings
from model_runtime.minilm import MiniLMEncoder, load_tokenizer
from tests.integration.helpers import new_tenant_key_sync
from tests.integration.test_conversation import events_of

TEXTS = ["Kafka keeps events in partitions.", "A lighthouse keeper watches the sea at night.",
         "Wie spät ist es?", "def f(x): return x * 2"]


@pytest.fixture(scope="module")
def key(stack: Settings) -> str:
    return new_tenant_key_sync(stack, "pro")[1]


def client(stack: Settings, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", api_key=key, timeout=60)


def test_vectors_match_the_reference_model_in_both_encodings(stack: Settings, key: str) -> None:
    reference = MiniLMEncoder().encode(TEXTS)
    c = client(stack, key)
    # Left unset, the SDK asks for base64 and decodes it itself; "float" comes as JSON numbers.
    for kwargs in ({}, {"encoding_format": "float"}):
        r = c.embeddings.create(model="all-minilm-l6-v2", input=TEXTS, **kwargs)  # type: ignore[arg-type]
        got = np.array([d.embedding for d in sorted(r.data, key=lambda d: d.index)], dtype=np.float32)
        assert got.shape == (len(TEXTS), 384)
        cosines = (got * reference).sum(axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(reference, axis=1)
        assert cosines.min() >= 1 - 1e-3, cosines
    tok = load_tokenizer()
    assert r.usage.prompt_tokens == sum(len(tok.encode(t).ids) for t in TEXTS)
    one = c.embeddings.create(model="all-MiniLM-L6-v2", input=TEXTS[1])
    assert len(one.data) == 1 and np.allclose(one.data[0].embedding, got[1], atol=1e-5)


async def test_each_request_is_recorded_with_its_counts_and_cost(stack: Settings, key: str) -> None:
    since = int(time.time() * 1000) - 1000
    async with httpx.AsyncClient(timeout=60) as http:
        resp = await http.post(f"http://127.0.0.1:{stack.edge_port}/v1/embeddings",
                               headers={"Authorization": f"Bearer {key}"},
                               json={"model": "all-minilm-l6-v2", "input": TEXTS[:2], "user": "u-7"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    events = await events_of(stack, body["id"], since, ("embeddings.created",), want=1)
    (event,) = events["embeddings.created"]
    assert event["inputs"] == 2 and event["prompt_tokens"] == body["usage"]["prompt_tokens"]
    assert event["user"] == "u-7" and event["cost_usd"] > 0 and event["envelope"]["tenant_id"] != "dev"


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "all-minilm-l6-v2", "input": "x", "dimensions": 128}, 400, "dimensions"),
    ({"model": "text-embedding-3-small", "input": "x"}, 404, "model"),
    ({"model": "all-minilm-l6-v2", "input": [[1, 2, 3]]}, 400, "input"),
    ({"model": "all-minilm-l6-v2", "input": "word " * 400}, 400, "input"),  # over MiniLM's 256 tokens
    ({"model": "all-minilm-l6-v2", "input": []}, 400, "input"),
    ({"model": "all-minilm-l6-v2", "input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
    ({"model": "all-minilm-l6-v2", "input": "x", "truncate": True}, 400, "truncate"),
])
def test_what_cannot_be_honoured_is_refused_by_name(stack: Settings, key: str, body: dict[str, Any], status: int,
                                                    param: str) -> None:
    resp = httpx.post(f"http://127.0.0.1:{stack.edge_port}/v1/embeddings", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == status, resp.text
    assert resp.json()["error"]["param"] == param


def test_the_plan_s_token_limit_holds_before_any_work(stack: Settings) -> None:
    _, free = new_tenant_key_sync(stack, "free")  # 20,000 tokens a minute
    texts = ["lighthouse " * 120] * 200  # about 24,000 tokens
    resp = httpx.post(f"http://127.0.0.1:{stack.edge_port}/v1/embeddings", timeout=30,
                      headers={"Authorization": f"Bearer {free}"}, json={"model": "all-minilm-l6-v2", "input": texts})
    assert resp.status_code == 429, resp.text
    assert httpx.post(f"http://127.0.0.1:{stack.edge_port}/v1/embeddings", timeout=30,
                      headers={"Authorization": f"Bearer {free}"},
                      json={"model": "all-minilm-l6-v2", "input": "x"}).status_code == 200
