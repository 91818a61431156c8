"""Generation claims and epochs on the real Redis: the one-round-trip claim, a takeover's new epoch, and the
edge's view of which epoch is live (streams/once.py, edge/replies.py)."""

from __future__ import annotations

import asyncio
import time
import uuid

from conflux.config import Settings
from conflux.redis_client import redis_client
from streams.context import ContextStore
from streams.once import Claim, Once


async def test_a_takeover_bumps_the_epoch_and_sees_the_streamed_mark(stack: Settings) -> None:
    r = redis_client(stack.redis_url)
    rid = f"fence-{uuid.uuid4().hex}"
    ctx = ContextStore(r)
    try:
        first, second = Once(r, "fence-w1"), Once(r, "fence-w2")
        await r.set("conflux:worker:fence-w1:heartbeat", "1", ex=30)
        assert await first.claim_generation(rid, ctx.key(rid)) == (Claim.MINE, 1, False)
        await ctx.put(rid, streamed=True)
        # The holder is alive: nobody else may take the generation, and the live epoch stays its own.
        assert await second.claim_generation(rid, ctx.key(rid)) == (Claim.BUSY, 0, False)
        assert await second.is_live_epoch(rid, 1)
        # The holder stalls past its heartbeat: the generation is taken over under a new epoch, which fences
        # the old one, and the new holder learns that the caller has seen part of an answer.
        await r.delete("conflux:worker:fence-w1:heartbeat")
        assert await second.claim_generation(rid, ctx.key(rid)) == (Claim.ORPHANED, 2, True)
        assert not await first.is_live_epoch(rid, 1)
        assert await r.get(f"conflux:epoch:{rid}") == b"2"
        await second.ended(rid, ctx.key(rid))
        assert await second.is_done("end", rid)
        # Nothing of the request but its end marker outlives it (Redis must not grow with traffic).
        assert not await r.exists(ctx.key(rid), f"conflux:epoch:{rid}", f"conflux:once:gen:{rid}")
    finally:
        await r.delete(f"conflux:epoch:{rid}", f"conflux:once:gen:{rid}", f"conflux:once:end:{rid}", ctx.key(rid))
        await r.aclose()


async def test_of_workers_that_race_for_a_dead_holders_claim_exactly_one_takes_over(stack: Settings) -> None:
    """Three workers see the same dead holder at once, 30 times over: each time exactly one takes the generation
    over (a GET-then-SET let two of them stream one answer)."""
    r = redis_client(stack.redis_url)
    workers = [f"race-w{n}-{uuid.uuid4().hex[:6]}" for n in range(3)]
    rids = [f"race-{uuid.uuid4().hex}" for _ in range(30)]
    try:
        for w in workers:
            await r.set(f"conflux:worker:{w}:heartbeat", "1", ex=60)
        for rid in rids:
            await r.set(f"conflux:once:gen:{rid}", "race-dead-worker", ex=60)  # held by a worker with no heartbeat
            claims = await asyncio.gather(*(Once(r, w).claim("gen", rid) for w in workers))
            assert sorted(c.value for c in claims) == ["busy", "busy", "orphaned"], rid
            winner = workers[claims.index(Claim.ORPHANED)]
            assert await r.get(f"conflux:once:gen:{rid}") == winner.encode()
    finally:
        await r.delete(*(f"conflux:once:gen:{rid}" for rid in rids),
                       *(f"conflux:worker:{w}:heartbeat" for w in workers))
        await r.aclose()


async def test_a_replay_waits_out_a_killed_holders_heartbeat_and_never_regenerates_an_ended_answer(
        stack: Settings) -> None:
    """A worker killed mid-answer leaves a heartbeat that lives up to 10 s longer, and the replay of its request
    may come first (the Kafka session timeout is also 10 s): the replay waits and takes over when the heartbeat
    expires. A replay that waited for a live holder which then ended the request does not generate it again."""
    r = redis_client(stack.redis_url)
    rid, ended = f"wait-{uuid.uuid4().hex}", f"wait-{uuid.uuid4().hex}"
    ctx = ContextStore(r)
    keys = [k for x in (rid, ended) for k in (f"conflux:epoch:{x}", f"conflux:once:gen:{x}",
                                               f"conflux:once:end:{x}", ctx.key(x))]
    try:
        killed, replay = Once(r, "wait-w1"), Once(r, "wait-w2")
        await r.set("conflux:worker:wait-w1:heartbeat", "1", px=600)  # its last heartbeat, running out
        assert await killed.claim_generation(rid, ctx.key(rid)) == (Claim.MINE, 1, False)
        await ctx.put(rid, streamed=True)
        t0 = time.monotonic()
        assert await replay.claim_generation(rid, ctx.key(rid), time.time() + 10) == (Claim.ORPHANED, 2, True)
        assert 0.3 < time.monotonic() - t0 < 5

        live = Once(r, "wait-w3")
        await r.set("conflux:worker:wait-w3:heartbeat", "1", ex=30)
        assert (await live.claim_generation(ended, ctx.key(ended)))[0] is Claim.MINE
        waiting = asyncio.create_task(replay.claim_generation(ended, ctx.key(ended), time.time() + 10))
        await asyncio.sleep(0.5)
        assert not waiting.done()
        await live.ended(ended, ctx.key(ended))
        assert await asyncio.wait_for(waiting, 5) == (Claim.DONE, 0, False)
        assert not await r.exists(f"conflux:once:gen:{ended}")  # the waiter left no claim behind
        # A replay that arrives after the end finds it in the claim's own round trip.
        assert await replay.claim_generation(ended, ctx.key(ended)) == (Claim.DONE, 0, False)
    finally:
        await r.delete(*keys, "conflux:worker:wait-w1:heartbeat", "conflux:worker:wait-w3:heartbeat")
        await r.aclose()
