"""Redis unavailable. The edge fails closed (503 + Retry-After: it can neither check API keys nor meter limits,
so it admits nothing it cannot account for); nothing crashes; service resumes when Redis is back, without
restarting anything. Session memory fails open (tests/unit/test_chain_logic.py)."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from conflux.config import Settings
from conflux.stack import manager
from tests.faults.helpers import responses_by_request


def burst(base: str, auth: dict[str, str], chat: dict[str, object]) -> list[int]:
    """40 chats, 20 at a time."""
    with ThreadPoolExecutor(20) as pool:
        return list(pool.map(lambda _: httpx.post(f"{base}/chat/completions", headers=auth, json=chat,
                                                  timeout=30).status_code, range(40)))


def test_edge_fails_closed_while_redis_is_down_and_recovers(stack: Settings) -> None:
    key = (stack.home / "dev-api-key").read_text().strip()
    base = f"http://127.0.0.1:{stack.edge_port}/v1"
    auth = {"Authorization": f"Bearer {key}"}
    chat = {"model": "echo", "max_tokens": 3, "messages": [{"role": "user", "content": "redis test"}]}
    pids = {s.name: s.pid() for s in manager.services(stack) if s.name in ("edge", "worker", "sink")}
    redis_svc = manager.by_name(stack, "redis")
    with httpx.Client(timeout=30) as http:
        first = http.post(f"{base}/chat/completions", headers=auth, json=chat)
        assert first.status_code == 200, first.text
        assert burst(base, auth, chat) == [200] * 40  # the edge now holds many pooled Redis connections
        redis_svc.stop()
        try:
            for method, path, body in (("POST", "/chat/completions", chat), ("GET", "/models", None),
                                       ("POST", "/feedback", {"response_id": first.json()["id"], "thumbs_up": True})):
                t0 = time.monotonic()
                r = http.request(method, f"{base}{path}", headers=auth, json=body)
                assert r.status_code == 503, (path, r.status_code, r.text)
                assert r.headers["retry-after"] == "5"
                assert r.json()["error"]["code"] == "service_unavailable"
                assert "unavailable" in r.json()["error"]["message"] and "6379" not in r.text  # no addresses
                assert time.monotonic() - t0 < 6, "must fail fast, not hang"
        finally:
            manager.up(stack, lambda m: None, ["redis"])
        deadline = time.monotonic() + 30
        while (r := http.post(f"{base}/chat/completions", headers=auth, json=chat)).status_code != 200:
            assert time.monotonic() < deadline, r.text
            time.sleep(0.5)
        assert r.json()["choices"][0]["message"]["content"] == "redis test redis"
    # Recovered for everyone at once: no burst of 503s from connections that died with the old Redis.
    statuses = burst(base, auth, chat)
    assert statuses == [200] * 40, statuses
    # The record agrees: the answers before and after the outage each ended once.
    ended = responses_by_request(stack, [first.json()["id"], r.json()["id"]])
    assert all(len(rows) == 1 and not rows[0][1] for rows in ended.values()) and len(ended) == 2
    # Everyone rode it out in place (the worker's heartbeat is back, so `conflux status` is healthy again).
    assert {s.name: s.pid() for s in manager.services(stack) if s.name in pids} == pids
    manager.by_name(stack, "worker").wait_healthy(15)
