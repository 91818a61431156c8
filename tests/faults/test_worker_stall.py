"""A worker that stalls (SIGSTOP) mid-answer, past its heartbeat and the group's session timeout, is taken
over while it still exists; then it resumes (SIGCONT) and carries on from where it stopped. Once its
generations were taken over, none of its chunks may reach a caller (the edge drops chunks of a generation
epoch that is no longer live), and every request still ends exactly once."""

from __future__ import annotations

import asyncio
import signal
from collections import Counter

import httpx

from conflux.config import Settings
from tests import procs
from tests.faults.helpers import assert_each_chat_whole_or_failed_once, stream_chat, wait_until_generating
from tests.integration.helpers import new_tenant_key

CHATS = 30
TOKENS = 60  # echo-paced: 20 pieces/s, so each answer streams for about 3 s
STALL_S = 16  # past the session timeout (10 s) and the heartbeat's TTL (10 s): the generations are taken over


async def test_a_stalled_worker_that_resumes_never_reaches_a_caller_it_lost(stack: Settings) -> None:
    second = procs.worker(stack, "worker-stall-2").start()
    try:
        procs.wait_worker(second, "worker-stall-2")
        _, key = await new_tenant_key(stack, "pro")
        base = f"http://127.0.0.1:{stack.edge_port}/v1"
        prompts = [f"stall {i} red green blue" for i in range(CHATS)]
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=CHATS + 8)) as http:
            await wait_until_generating(stack, http, base, key, "worker-stall-2")
            chats = [asyncio.create_task(stream_chat(http, base, key, p, max_tokens=TOKENS)) for p in prompts]
            await asyncio.sleep(1.0)  # every chat accepted, many streaming
            second.signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(STALL_S)
            finally:
                second.signal(signal.SIGCONT)  # it resumes with its streams and sends still in hand
            outcomes = await asyncio.wait_for(asyncio.gather(*chats), 150)  # none may hang
            await asyncio.sleep(3.0)  # the resumed worker's late chunks and events, if any, have landed
    finally:
        second.stop()

    kinds = Counter(o.kind for o in outcomes)
    await assert_each_chat_whole_or_failed_once(stack, prompts, outcomes, TOKENS)
    # The stall must have hit work in flight: taken over (explicit error or regenerated, > the stall's
    # start) rather than all answered before it.
    stalled = [o for o in outcomes if o.kind == "error" or o.seconds > 8]
    assert stalled, f"the stall hit no chat in flight (slowest {max(o.seconds for o in outcomes):.1f}s)"
    print(f"worker stall: {kinds['ok']} answered, {kinds['error']} explicit errors, {len(stalled)} taken over, "
          "0 spliced, 0 twice")
