"""kill -9 one of two chain workers while 50 budgeted chats stream: the budget is never overspent, no hold is
left behind, and the spend Redis counted equals the spend in the event log to the micro-dollar."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import redis.asyncio as aioredis

from conflux.budget import Budget, Budgets, limits_for
from conflux.clickhouse import clickhouse_client
from conflux.config import Settings
from conflux.models import load_models
from conflux.tenants import ApiKeyStore
from consumers.reconcile import reconcile
from tests import procs
from tests.faults.helpers import assert_each_chat_whole_or_failed_once, stream_chat, wait_until_generating
from tests.integration.helpers import new_tenant_key

CHATS = 50
TOKENS = 40  # echo-paced: about 2 s of streaming each
ROOM_FOR = 20  # the budget holds the worst case of this many of the chats


async def test_kill_a_worker_mid_stream_and_the_budget_still_adds_up(stack: Settings) -> None:
    paced = load_models().get("echo-paced")
    second = procs.worker(stack, "worker-budget-2").start()
    r = aioredis.Redis.from_url(stack.redis_url)
    try:
        procs.wait_worker(second, "worker-budget-2")
        tenant, key = await new_tenant_key(stack, "pro")
        base = f"http://127.0.0.1:{stack.edge_port}/v1"
        prompts = [f"budget fault {i} alpha beta" for i in range(CHATS)]
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=CHATS + 8)) as http:
            await wait_until_generating(stack, http, base, key, "worker-budget-2")
            # Set after the warm-up, which counts in the window: its spend plus room for ROOM_FOR chats.
            day = limits_for([(f"tenant:{tenant}", None)])[0]
            warm_spend = (await Budgets(r).spent(day))[0]
            budget = warm_spend + ROOM_FOR * paced.cost_micros(40, TOKENS)
            await ApiKeyStore(r).set_budget(tenant, Budget("day", budget))
            chats = [asyncio.create_task(stream_chat(http, base, key, p, max_tokens=TOKENS)) for p in prompts]
            await asyncio.sleep(1.0)
            await asyncio.to_thread(second.kill9)
            outcomes = await asyncio.wait_for(asyncio.gather(*chats), 150)
        refused = [o for o in outcomes if "quota" in o.detail]  # by the edge (429) or at routing (in the stream)
        answered = [o for o in outcomes if o not in refused]
        await assert_each_chat_whole_or_failed_once(stack, [p for p, o in zip(prompts, outcomes, strict=True)
                                                            if o in answered], answered, TOKENS)
        spent, _ = await Budgets(r).spent(day)
        assert spent <= budget
        assert int(await r.hget(day.redis_key, "held_micros") or 0) == 0, "a hold was left behind"
        client = clickhouse_client(stack)
        try:
            drifts = await reconcile(client, r, day.window, tenant)
            for _ in range(30):  # the sink catches up
                if drifts and all(d.exact for d in drifts):
                    break
                await asyncio.sleep(1)
                drifts = await reconcile(client, r, day.window, tenant)
        finally:
            client.close()
        assert drifts and all(d.exact for d in drifts), [d.record() for d in drifts]
        print(f"budget kill: {len(answered)} answered or interrupted, {len(refused)} refused for quota, "
              f"spent {spent} of {budget} micro-dollars on {dt.date.today()}, 0 drift")
    finally:
        second.stop()
        await r.aclose()
