"""Budgets on the real Redis and the real chain: a hold is atomic and once, concurrent streams never spend past
a budget, the spend recorded equals the answers' costs exactly, and the event log agrees (reconciliation)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from conflux.budget import Budget, Budgets, Limit, limits_for, window
from conflux.clickhouse import clickhouse_client
from conflux.config import REPO_ROOT, Settings
from conflux.models import load_models
from conflux.tenants import ApiKeyStore
from consumers.reconcile import reconcile
from tests.integration.helpers import new_tenant_key

PACED = load_models().get("echo-paced")
MAX_TOKENS = 16


@pytest.fixture
async def r(stack: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(stack.redis_url)
    yield client
    await client.aclose()


async def _held(r: aioredis.Redis, lim: Limit) -> int:
    return int(await r.hget(lim.redis_key, "held_micros") or 0)


def _scope() -> str:
    return f"tenant:b-{uuid.uuid4().hex[:8]}"


async def test_a_hold_is_all_or_nothing_and_settles_once(r: aioredis.Redis) -> None:
    budgets = Budgets(r)
    roomy, tight = limits_for([(_scope(), Budget("day", 1000)), (_scope(), Budget("day", 100))])[::2]
    # The second budget has no room: nothing is held against the first either.
    assert await budgets.reserve("req-1", [roomy, tight], 150, 10) == tight
    assert await r.hget(roomy.redis_key, "held_micros") is None
    assert await budgets.reserve("req-2", [roomy, tight], 60, 10) is None
    assert await budgets.reserve("req-2", [roomy, tight], 60, 10) is None  # a replay: not held twice
    assert await _held(r, roomy) == 60
    assert await budgets.reserve("req-3", [roomy, tight], 60, 10) == tight  # 60 held + 60 > 100
    assert await budgets.settle("req-2", 25, 7)
    assert not await budgets.settle("req-2", 25, 7)  # settled once
    for lim in (roomy, tight):
        assert await budgets.spent(lim) == (25, 7)
        assert await _held(r, lim) == 0
    standing = await budgets.standing([roomy, tight])
    assert standing is not None and standing.scope == tight.scope and standing.usd_micros_left == 75


async def test_a_free_request_holds_and_settles_nothing_without_error(r: aioredis.Redis) -> None:
    """The echo models cost 0 micro-dollars: a hold of 0 must settle (a Lua -0 once made HINCRBY fail)."""
    budgets = Budgets(r)
    lim = limits_for([(_scope(), None)])[0]
    rid = f"free-{uuid.uuid4().hex}"
    assert await budgets.reserve(rid, [lim], 0, 0) is None
    assert await budgets.settle(rid, 0, 12)
    assert await budgets.spent(lim) == (0, 12)


async def test_a_hold_nobody_settles_is_released(r: aioredis.Redis) -> None:
    budgets = Budgets(r)
    lim = Limit(_scope(), window("day", dt.datetime.now(dt.UTC)), 100, None)
    rid = f"lost-{uuid.uuid4().hex}"
    assert await budgets.reserve(rid, [lim], 80, 5) is None
    assert await budgets.reserve(rid + "b", [lim], 80, 5) == lim
    assert await budgets.release_expired(time.time() + 3600) >= 1
    assert await budgets.spent(lim) == (0, 0) and await _held(r, lim) == 0
    assert await budgets.reserve(rid + "b", [lim], 80, 5) is None


async def test_concurrent_holds_never_overspend(r: aioredis.Redis) -> None:
    budgets = Budgets(r)
    lim = Limit(_scope(), window("month", dt.datetime.now(dt.UTC)), 1000, None)
    held = await asyncio.gather(*(budgets.reserve(f"c-{i}-{uuid.uuid4().hex}", [lim], 100, 1) for i in range(50)))
    assert sum(h is None for h in held) == 10


async def _chat(http: httpx.AsyncClient, base: str, key: str, content: str) -> dict[str, Any]:
    """One streamed chat with usage: {"status", "code", "usage"} (code: the error's, in the body or stream)."""
    body = {"model": "echo-paced", "stream": True, "max_tokens": MAX_TOKENS, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": content}]}
    async with http.stream("POST", f"{base}/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {key}"}) as resp:
        if resp.status_code != 200:
            return {"status": resp.status_code, "code": json.loads(await resp.aread())["error"]["code"],
                    "usage": None, "headers": dict(resp.headers)}
        usage, code = None, None
        async for line in resp.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                code = chunk["error"]["code"] if "error" in chunk else code
                usage = chunk.get("usage") or usage
        return {"status": 200, "code": code, "usage": usage, "headers": dict(resp.headers)}


def _cost(usage: dict[str, Any]) -> int:
    return PACED.cost_micros(usage["prompt_tokens"], usage["completion_tokens"])


async def _logged_exact(stack: Settings, r: aioredis.Redis, tenant: str, win: str, wait_s: float = 60) -> list[Any]:
    """The reconciliation of the tenant's window, once the sink has caught up (or after wait_s)."""
    client = clickhouse_client(stack)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            drifts = await reconcile(client, r, win, tenant)
            if (drifts and all(d.exact for d in drifts)) or time.monotonic() > deadline:
                return drifts
            await asyncio.sleep(1)
    finally:
        client.close()


async def test_200_concurrent_streams_never_spend_past_a_budget_and_the_spend_is_exact(
        stack: Settings, r: aioredis.Redis) -> None:
    tenant, key = await new_tenant_key(stack, "pro")
    prompt = "budget alpha beta gamma delta"
    base = f"http://127.0.0.1:{stack.edge_port}/v1"
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=210)) as http:
        probe = await _chat(http, base, key, f"{prompt} 1000")  # the prompt as built: the chain adds to it
        assert probe["usage"], probe
        # The day's spend so far plus the worst case of 10 more requests.
        budget = _cost(probe["usage"]) + 10 * PACED.cost_micros(probe["usage"]["prompt_tokens"], MAX_TOKENS)
        await ApiKeyStore(r).set_budget(tenant, Budget("day", budget))
        results = [probe, *await asyncio.wait_for(asyncio.gather(*(_chat(http, base, key, f"{prompt} {i}")
                                                                  for i in range(200))), 180)]
    answered = [x for x in results if x["status"] == 200 and x["code"] is None]
    refused = [x for x in results if x["code"] == "insufficient_quota"]
    others = [x for x in results if x not in answered + refused]
    assert len(answered) >= 11 and not others, others[:3]
    assert all(x["usage"] and x["usage"]["completion_tokens"] == MAX_TOKENS for x in answered)
    lim = limits_for([(f"tenant:{tenant}", Budget("day", budget))])[0]
    spent, tokens = await Budgets(r).spent(lim)
    assert spent <= budget
    assert spent == sum(_cost(x["usage"]) for x in answered)  # exactly, in micro-dollars
    assert tokens == sum(x["usage"]["total_tokens"] for x in answered)
    assert await _held(r, lim) == 0  # every hold settled
    # The event log says the same (the reconciliation job): per tenant and per key, to the micro-dollar.
    drifts = await _logged_exact(stack, r, tenant, lim.window)
    assert {d.scope for d in drifts} == {f"tenant:{tenant}", f"key:{tenant}:{(await _key_id(r, tenant))}"}
    assert all(d.exact and d.logged_micros == spent for d in drifts), [d.record() for d in drifts]
    print(f"budget race: {len(answered)} answered, {len(refused)} refused (insufficient_quota), spent {spent} of "
          f"{budget} micro-dollars, {tokens} tokens; Redis = sum of answers = event log, to the micro-dollar")


async def _key_id(r: aioredis.Redis, tenant: str) -> str:
    return (await ApiKeyStore(r).list_keys(tenant))[0].id


async def test_a_spent_budget_is_refused_at_the_edge_with_what_is_left_and_when_it_renews(
        stack: Settings, r: aioredis.Redis) -> None:
    tenant, key = await new_tenant_key(stack, "pro")
    base = f"http://127.0.0.1:{stack.edge_port}/v1"
    async with httpx.AsyncClient(timeout=60) as http:
        first = await _chat(http, base, key, "one two three")
        assert first["status"] == 200 and first["code"] is None and first["usage"]
        # An operator lowers the budget below what was spent today: the next request does no work at all.
        assert _cli(stack, "tenants", "set-budget", "--tenant", tenant, "--budget-tokens", "5",
                    "--budget-period", "day").returncode == 0
        refused = await _chat(http, base, key, "one two three")
        assert refused["status"] == 429 and refused["code"] == "insufficient_quota"
        assert refused["headers"]["x-budget-remaining-tokens"] == "0"
        tomorrow = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%Y-%m-%dT00:00:00Z")
        assert refused["headers"]["x-budget-renews"] == tomorrow
        # The key's holder sees the same in /v1/usage: the budget, what was spent, nothing left.
        usage = (await http.get(f"{base}/usage", headers={"Authorization": f"Bearer {key}"})).json()
        [day] = usage["budgets"]
        assert (day["scope"], day["period"], day["limit_tokens"], day["left_tokens"]) == ("tenant", "day", 5, 0)
        assert day["spent_tokens"] == first["usage"]["total_tokens"]
        # Another tenant is not affected, and clearing the budget lifts the refusal.
        assert _cli(stack, "tenants", "set-budget", "--tenant", tenant, "--clear").returncode == 0
        again = await _chat(http, base, key, "one two three")
        assert again["status"] == 200 and again["code"] is None


async def test_a_key_budget_limits_that_key_only(stack: Settings, r: aioredis.Redis) -> None:
    tenant, key = await new_tenant_key(stack, "pro")
    made = _cli(stack, "keys", "create", "--tenant", tenant, "--name", "capped", "--budget-usd", "0.000001",
                "--budget-period", "month")
    assert made.returncode == 0, made.stderr
    capped = made.stdout.strip()
    base = f"http://127.0.0.1:{stack.edge_port}/v1"
    async with httpx.AsyncClient(timeout=60) as http:
        refused = await _chat(http, base, capped, "one two three")  # its worst case is more than $0.000001
        assert refused["code"] == "insufficient_quota"
        ok = await _chat(http, base, key, "one two three")
        assert ok["status"] == 200 and ok["code"] is None


async def test_embeddings_pass_the_same_gate(stack: Settings, r: aioredis.Redis) -> None:
    tenant, key = await new_tenant_key(stack, "pro")
    await ApiKeyStore(r).set_budget(tenant, Budget("day", None, 12))
    base = f"http://127.0.0.1:{stack.edge_port}/v1"
    async with httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {key}"}) as http:
        ok = await http.post(f"{base}/embeddings", json={"model": "all-minilm-l6-v2", "input": "a b c d"})
        assert ok.status_code == 200, ok.text
        used = ok.json()["usage"]["total_tokens"]
        too_much = await http.post(f"{base}/embeddings", json={"model": "all-minilm-l6-v2",
                                                                "input": " ".join(["word"] * 20)})
        assert too_much.status_code == 429 and too_much.json()["error"]["code"] == "insufficient_quota"
    lim = limits_for([(f"tenant:{tenant}", Budget("day", None, 12))])[0]
    assert (await Budgets(r).spent(lim))[1] == used


def _cli(stack: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator's command, against the test stack (its settings come from the environment, as here)."""
    return subprocess.run([sys.executable, "-m", "conflux.cli", *args], capture_output=True, text=True,
                          timeout=60, cwd=REPO_ROOT)
