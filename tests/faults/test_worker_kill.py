"""kill -9 one of two chain workers with 50 chats in flight: each accepted request ends exactly once."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from conflux.config import Settings
from tests import procs
from tests.faults.helpers import assert_each_chat_whole_or_failed_once, stream_chat, wait_until_generating
from tests.integration.helpers import new_tenant_key

CHATS = 50
TOKENS = 40  # echo-paced: 20 pieces/s, so each answer streams for about 2 s


async def test_kill_one_of_two_workers_with_50_chats_in_flight(stack: Settings) -> None:
    second = procs.worker(stack, "worker-fault-2").start()
    try:
        procs.wait_worker(second, "worker-fault-2")
        _, key = await new_tenant_key(stack, "pro")
        base = f"http://127.0.0.1:{stack.edge_port}/v1"
        prompts = [f"fault {i} alpha beta gamma" for i in range(CHATS)]
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=CHATS + 8)) as http:
            await wait_until_generating(stack, http, base, key, "worker-fault-2")
            chats = [asyncio.create_task(stream_chat(http, base, key, p, max_tokens=TOKENS)) for p in prompts]
            await asyncio.sleep(1.0)  # every chat accepted, many streaming
            await asyncio.to_thread(second.kill9)
            outcomes = await asyncio.wait_for(asyncio.gather(*chats), 150)  # none may hang
    finally:
        second.stop()

    kinds = Counter(o.kind for o in outcomes)
    await assert_each_chat_whole_or_failed_once(stack, prompts, outcomes, TOKENS)
    # The kill must have hit work in flight: a chat of the dead worker either ends with the explicit error or
    # waits for the consumer group to hand its partitions over (the session timeout, 10 s; unaffected: ~3 s).
    failed_over = [o for o in outcomes if o.kind == "error" or o.seconds > 8]
    assert failed_over, f"the kill hit no chat in flight (slowest {max(o.seconds for o in outcomes):.1f}s)"
    print(f"worker kill: {kinds['ok']} answered, {kinds['error']} explicit errors, "
          f"{len(failed_over)} failed over, 0 lost, 0 twice")
