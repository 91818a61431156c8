"""Generation and end claims and epochs on the real Redis: the one-round-trip claim, a takeover's new epoch, the
edge's view of which epoch is live, and a takeover of a dead holder's end (streams/once.py, streams/ending.py,
edge/replies.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest

from conflux.config import Settings
from conflux.kafka import PendingEvents
from conflux.redis_client import redis_client
from conflux.schemas import SchemaRegistry
from conflux.serde import AvroSerde, new_envelope
from conflux.topics import load_catalogue
from streams.context import ContextStore
from streams.deps import Deps
from streams.ending import Ending
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
        assert await r.get(f"conflux:epoch:{rid}") == b"1"
        # The holder stalls past its heartbeat: the generation is taken over under a new epoch, which fences
        # the old one, and the new holder learns that the caller has seen part of an answer.
        await r.delete("conflux:worker:fence-w1:heartbeat")
        assert await second.claim_generation(rid, ctx.key(rid)) == (Claim.ORPHANED, 2, True)
        assert await r.get(f"conflux:epoch:{rid}") == b"2"  # generation 1 is no longer the live one
        await second.ended(rid, ctx.key(rid))
        assert await second.is_done("end", rid)
        # Nothing of the request but its end marker outlives it (Redis must not grow with traffic).
        assert not await r.exists(ctx.key(rid), f"conflux:epoch:{rid}", f"conflux:once:gen:{rid}")
    finally:
        await r.delete(f"conflux:epoch:{rid}", f"conflux:once:gen:{rid}", f"conflux:once:end:{rid}", ctx.key(rid))
        await r.aclose()


async def test_an_ending_of_a_generation_taken_over_is_refused_in_the_claims_own_round_trip(stack: Settings) -> None:
    """A worker that stalled and resumes after a takeover must not end the request (its ending would reach the
    caller before the new holder's): the end claim itself checks the epoch, and leaves no claim behind."""
    r = redis_client(stack.redis_url)
    rid = f"fence-end-{uuid.uuid4().hex}"
    ctx = ContextStore(r)
    try:
        stalled, taker = Once(r, "fence-end-w1"), Once(r, "fence-end-w2")
        assert await stalled.claim_generation(rid, ctx.key(rid)) == (Claim.MINE, 1, False)
        assert await taker.claim("gen", rid) is Claim.ORPHANED  # no heartbeat: the holder is seen dead
        assert await taker.new_epoch(rid) == 2
        ending = {"end:0:chat.responses": b"stalled"}
        assert await stalled.claim_end(rid, ctx.key(rid), ending, epoch=1) == (Claim.TAKEN_OVER, {})
        assert not await r.exists(Once.key("end", rid)) and not await r.hexists(ctx.key(rid), "end:0:chat.responses")
        # The live generation's ending goes through.
        assert await taker.claim_end(rid, ctx.key(rid), {"end:0:chat.responses": b"taker"}, epoch=2) == (
            Claim.MINE, {})
        assert await r.hget(ctx.key(rid), "end:0:chat.responses") == b"taker"
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


class _Recorder:
    """What a Deps.end publishes, in order: events (topic, event id), settles and final chunks."""

    def __init__(self, die_after: str | None = None) -> None:
        self.log: list[tuple[str, str]] = []
        self.die_after = die_after

    def note(self, what: str, detail: str) -> None:
        self.log.append((what, detail))
        if what == self.die_after:
            raise _Killed(what)


class _Killed(BaseException):
    """The ending worker stops at a chosen step: nothing of the ending after it runs."""


def _ending_deps(r: Any, worker: str, rec: _Recorder) -> Any:
    """The real Deps.end over the real Redis and Once, with Kafka and the budget store recorded instead."""
    class Events(PendingEvents):  # the gate (wait_open) is the real, always-open one
        def __init__(self) -> None:
            super().__init__(publisher=None)  # type: ignore[arg-type]  # recorded, not published

        async def add(self, topic: str, record: dict[str, Any], key: str | None = None) -> None:
            rec.note(topic, record["envelope"]["event_id"])

        async def settle(self) -> None:
            return None

    class Budgets:
        async def settle(self, rid: str, micros: int, tokens: int) -> bool:
            rec.note("settle", f"{micros} {tokens}")
            return True

    async def reply_final(request: dict[str, Any], record: dict[str, Any]) -> None:
        rec.note("final", f"{record['finish_reason']} {record['error']}")

    serde = AvroSerde(SchemaRegistry())
    deps: Any = SimpleNamespace(once=Once(r, worker), ctx=ContextStore(r), serde=serde,
                                catalogue=load_catalogue(registry=serde.registry), budgets=Budgets(),
                                reply_final=reply_final, publisher=None, inference_timeout_s=60.0, worker_id=worker,
                                envelope=lambda env: new_envelope(tenant_id=env["tenant_id"],
                                                                  conversation_id=env["conversation_id"],
                                                                  request_id=env["request_id"], producer=worker))
    deps.end = partial(Deps.end, deps)
    deps._publish_ending = partial(Deps._publish_ending, deps)
    deps.end_request = partial(Deps.end_request, deps)
    deps.finish_with_error = partial(Deps.finish_with_error, deps)
    return deps, Events()


@pytest.mark.parametrize("how", ["killed", "failed"])
@pytest.mark.parametrize("dies_after", ["chat.responses", "settle", "final"])
async def test_a_takeover_of_a_dead_holders_end_publishes_its_recorded_ending_again_never_one_of_its_own(
        stack: Settings, dies_after: str, how: str) -> None:
    """A worker killed after publishing its answer's `chat.responses` (or after settling its budget, or after
    the caller's final chunk) but before its end mark: the replay must not end the request a second time (a
    budget-kill CI run recorded 'length' and then 'insufficient_quota' for one request). It completes the
    ending the dead holder recorded with its claim: the same event ids, which the log's consumers deduplicate,
    and the same charge, which the budget store settles once. Likewise after a holder that failed (its claim
    released for a retry): the retry publishes the ending already recorded, not a new one."""
    r = redis_client(stack.redis_url)
    rid = f"end-{uuid.uuid4().hex}"
    request = {"envelope": {"request_id": rid, "conversation_id": "c1", "tenant_id": "t1", "event_time": None},
               "model": "echo", "reply_topic": "replies"}
    ctx = ContextStore(r)
    try:
        first = _Recorder(die_after=dies_after)
        holder, events = _ending_deps(r, "end-w1", first)
        ending = Ending(key="c1", events=[("chat.responses", {
            "envelope": holder.envelope(request["envelope"]), "model": "echo", "content": "an answer",
            "finish_reason": "length", "blocked": False, "error": None, "prompt_tokens": 3,
            "completion_tokens": 4, "citations": [], "latency_ms": 1.0, "cost_micros": 70, "key_id": ""})],
            final={"envelope": holder.envelope(request["envelope"]), "sequence": 4, "text": "", "is_final": True,
                   "finish_reason": "length", "error": None, "model": "echo", "prompt_tokens": 3,
                   "completion_tokens": 4, "epoch": 1}, micros=70, tokens=7)
        with pytest.raises(_Killed):
            await holder.end(request, ending, events)
        assert not await holder.once.is_done("end", rid)  # stopped before its end mark
        if how == "killed":  # a kill -9 leaves the claim to the dead worker (it has no heartbeat)
            await r.set(f"conflux:once:end:{rid}", "end-w1", ex=60)
        else:
            assert not await r.exists(f"conflux:once:end:{rid}")  # released for a retry

        second = _Recorder()
        replay, replay_events = _ending_deps(r, "end-w2", second)
        await replay.finish_with_error(request, "generation was interrupted by a worker failure; retry the request",
                                       events=replay_events)
        assert second.log == [("chat.responses", ending.events[0][1]["envelope"]["event_id"]),
                              ("settle", "70 7"), ("final", "length None")]
        assert await replay.once.is_done("end", rid)
        assert not await r.exists(ctx.key(rid))  # the recorded ending does not outlive the request
        # Any later replay finds the end marked done and publishes nothing.
        third = _Recorder()
        late, late_events = _ending_deps(r, "end-w3", third)
        await late.finish_with_error(request, "never sent", events=late_events)
        assert third.log == []
    finally:
        await r.delete(f"conflux:once:end:{rid}", ctx.key(rid))
        await r.aclose()


async def test_a_takeover_of_an_end_claimed_but_not_recorded_ends_the_request_itself(stack: Settings) -> None:
    """A holder that claimed the end and died before recording it published nothing: the takeover ends the
    request with its own ending (the error), exactly once."""
    r = redis_client(stack.redis_url)
    rid = f"end-{uuid.uuid4().hex}"
    request = {"envelope": {"request_id": rid, "conversation_id": "c1", "tenant_id": "t1", "event_time": None},
               "model": "echo", "reply_topic": "replies"}
    try:
        await r.set(f"conflux:once:end:{rid}", "end-dead-worker", ex=60)  # no heartbeat, no record
        rec = _Recorder()
        replay, events = _ending_deps(r, "end-w4", rec)
        await replay.finish_with_error(request, "interrupted; retry", events=events)
        assert [what for what, _ in rec.log] == ["chat.responses", "settle", "final"]
        assert rec.log[1:] == [("settle", "0 0"), ("final", "error interrupted; retry")]
    finally:
        await r.delete(f"conflux:once:end:{rid}", ContextStore(r).key(rid))
        await r.aclose()
