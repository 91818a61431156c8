"""GET /v1/usage on the real stack: a tenant's requests, tokens and cost per day, per model and per key, from
the event log; never another tenant's; with the budgets that apply."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from conflux.config import Settings
from conflux.models import load_models
from conflux.tenants import hash_key
from tests.integration.helpers import new_tenant_key_sync


def _get(stack: Settings, key: str, **params: Any) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{stack.edge_port}/v1/usage", params=params,
                     headers={"Authorization": f"Bearer {key}"}, timeout=30)


def _results(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for bucket in body["data"] for r in bucket["results"]]


def test_usage_counts_a_tenants_own_requests_per_model_and_key(stack: Settings) -> None:
    _, key = new_tenant_key_sync(stack, "pro")
    _, other = new_tenant_key_sync(stack, "pro")
    base = f"http://127.0.0.1:{stack.edge_port}/v1"
    auth = {"Authorization": f"Bearer {key}"}
    paced = load_models().get("echo-paced")
    cost = 0
    for words in ("one two", "three four five"):
        r = httpx.post(f"{base}/chat/completions", headers=auth, timeout=60, json={
            "model": "echo-paced", "max_tokens": 3, "messages": [{"role": "user", "content": words}]})
        assert r.status_code == 200, r.text
        cost += paced.cost_micros(r.json()["usage"]["prompt_tokens"], r.json()["usage"]["completion_tokens"])
    emb = httpx.post(f"{base}/embeddings", headers=auth, timeout=60,
                     json={"model": "all-minilm-l6-v2", "input": "a b c"})
    assert emb.status_code == 200, emb.text
    httpx.post(f"{base}/chat/completions", headers={"Authorization": f"Bearer {other}"}, timeout=60, json={
        "model": "echo-paced", "max_tokens": 3, "messages": [{"role": "user", "content": "not yours"}]})

    deadline = time.monotonic() + 60
    while True:  # the sink writes in batches
        body = _get(stack, key, group_by="model,api_key_id").json()
        by_model = {r["model"]: r for r in _results(body)}
        if sum(r["num_model_requests"] for r in by_model.values()) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert set(by_model) == {"echo-paced", "all-minilm-l6-v2"}, body
    chat = by_model["echo-paced"]
    assert chat["num_model_requests"] == 2 and chat["output_tokens"] == 6
    assert chat["cost_usd_micros"] == cost  # the same integers the budgets were settled with
    assert by_model["all-minilm-l6-v2"]["input_tokens"] == emb.json()["usage"]["prompt_tokens"]
    assert {r["api_key_id"] for r in by_model.values()} == {"key_" + hash_key(key)[:12]}
    today = body["data"][-1]
    assert today["object"] == "bucket" and today["end_time"] - today["start_time"] == 86400
    assert len(body["data"]) in (7, 8) and body["budgets"] == []  # a week of days by default; no budget set
    # Hourly, ungrouped: one result in the current hour with all three requests.
    hourly = _get(stack, key, bucket_width="1h", start_time=int(time.time()) - 3600).json()
    assert sum(r["num_model_requests"] for r in _results(hourly)) == 3


@pytest.mark.parametrize(("params", "param"), [
    ({"bucket_width": "1w"}, "bucket_width"), ({"group_by": "project_id"}, "group_by"),
    ({"start_time": "yesterday"}, "start_time"), ({"start_time": "100", "end_time": "50"}, "start_time"),
    ({"bucket_width": "1h", "start_time": "0"}, "start_time"), ({"limit": "5"}, "limit")])
def test_bad_usage_queries_are_refused_naming_the_parameter(stack: Settings, params: dict[str, str],
                                                            param: str) -> None:
    _, key = new_tenant_key_sync(stack, "pro")
    r = _get(stack, key, **params)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
