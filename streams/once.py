"""Once per request, across workers: the end of a request (its final chunk and `chat.responses` event) and
its generation happen once even though Kafka delivers at least once.

A stage is replayed when a worker dies before committing its offsets, or when partitions move. A replayed
stage asks here first. Claims live in Redis as `conflux:once:<what>:<request id>` holding the claiming
worker's id, then `done`. A claim held by a worker whose heartbeat has stopped is orphaned and may be taken
over; a claim held by a live worker is left to it, but a replay waits for that worker to finish (or die) rather
than walking away: the Kafka session timeout and the heartbeat's TTL are both 10 s, so a replay can arrive
while a killed holder's heartbeat has not yet expired, and a replay that gave up then left its request with no
answer at all (its offset committed, its holder dead).
"""

from __future__ import annotations

import asyncio
import enum
import time
from datetime import datetime
from typing import Any

from streams.context import CTX_TTL_S
from streams.ending import RECORDED

# How long a request's end stays marked done. A replay can only come from offsets not yet committed (seconds,
# or a rebalance after the 10 s session timeout), and a request older than `expiry_s` (the inference timeout
# plus a grace) is expired before any stage runs. So the mark only has to outlive that horizon, with a margin
# for a slow rebalance. It is the one key every chat leaves behind: at 15 minutes it grew Redis by ~1 MB per
# 6,000 chats (7% of its memory over the 10-minute soak); at this horizon it plateaus within two minutes.
DONE_MARGIN_S = 60.0
EXPIRY_GRACE_S = 5.0


def expiry_s(inference_timeout_s: float) -> float:
    """Age after which a request is expired unprocessed: no edge waits for its answer any longer."""
    return inference_timeout_s + EXPIRY_GRACE_S


def expires_at(request: dict[str, Any], inference_timeout_s: float) -> float:
    """Wall-clock time (time.time()) after which no edge waits for this request's answer any longer."""
    sent = request["envelope"]["event_time"]
    born = sent.timestamp() if isinstance(sent, datetime) else time.time()
    return born + expiry_s(inference_timeout_s)


def done_ttl_s(inference_timeout_s: float) -> int:
    return int(expiry_s(inference_timeout_s) + DONE_MARGIN_S)


# Unless the request has ended, SET NX the claim; if won, bump the epoch and read the streamed mark.
# KEYS: claim, epoch, context hash, end mark.
_CLAIM_GENERATION = """
if redis.call('GET', KEYS[4]) == 'done' then
  return {2, 0, 0}
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  local epoch = redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  return {1, epoch, redis.call('HGET', KEYS[3], 'streamed') and 1 or 0}
end
return {0, 0, 0}
"""

# Take a claim over from the holder seen dead, only if it still holds it (or the claim has just expired): a
# compare-and-set, so that of two workers who both saw the same dead holder exactly one takes over.
# KEYS: claim. ARGV: the holder seen, the new holder, TTL.
_TAKE_OVER = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] or not holder then
  redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
  return 1
end
return 0
"""


# Unless the generation the ending belongs to was taken over (its epoch is no longer the live one: then 3), SET NX
# the end claim and, in the same step, record the ending its holder is about to publish (streams/ending.py) in
# the request's context hash, unless an earlier holder recorded one (then 2: that one is to be published).
# KEYS: claim, context hash, epoch. ARGV: holder, TTL, the field that marks a recorded ending, the ending's epoch
# ('' when it has none: an ending made before any generation), then field, value, ...
_CLAIM_END = """
local live = redis.call('GET', KEYS[3])
if ARGV[4] ~= '' and live and live ~= ARGV[4] then
  return 3
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 1 then
    return 2
  end
  redis.call('HSET', KEYS[2], unpack(ARGV, 5))
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

BUSY_POLL_S = 0.25  # between looks at a claim another live worker holds


class Claim(enum.Enum):
    MINE = "mine"  # first to claim: go ahead
    ORPHANED = "orphaned"  # an earlier holder died part-way; now mine, but it may have left traces
    BUSY = "busy"  # a live worker (or this one, in another actor) holds it: it will finish the job
    DONE = "done"  # already done: nothing to do
    TAKEN_OVER = "taken over"  # (an end) its generation is another worker's now: that worker ends the request


class Once:
    def __init__(self, redis: Any, worker_id: str, done_ttl_s: int = done_ttl_s(60.0)) -> None:
        self._r = redis
        self.worker_id = worker_id
        self.done_ttl_s = done_ttl_s
        self._active: set[str] = set()  # "<what>:<request id>" claimed by this process and not yet done
        # Sent by digest (EVALSHA) once Redis knows them, not as the whole script on every call.
        self._claim_generation = redis.register_script(_CLAIM_GENERATION)
        self._claim_end = redis.register_script(_CLAIM_END)

    @staticmethod
    def key(what: str, request_id: str) -> str:
        return f"conflux:once:{what}:{request_id}"

    async def claim(self, what: str, request_id: str, wait_until: float = 0.0) -> Claim:
        """MINE, ORPHANED, DONE, or BUSY. While another live worker holds the claim and the wall clock is before
        `wait_until` (the request's expiry), this waits for it to finish (DONE) or die (ORPHANED): if it died
        after this replay gave up, nobody would end the request. Another actor of this same process is never
        waited for: it dies with this one."""
        key = self.key(what, request_id)
        if await self._r.set(key, self.worker_id, nx=True, ex=CTX_TTL_S):
            self._active.add(f"{what}:{request_id}")
            return Claim.MINE
        while True:
            raw = await self._r.get(key)
            holder = raw.decode() if isinstance(raw, bytes) else raw
            if holder == "done":
                return Claim.DONE
            if holder is not None and await self._alive(holder, f"{what}:{request_id}"):
                if holder == self.worker_id or time.time() >= wait_until:
                    return Claim.BUSY
                await asyncio.sleep(BUSY_POLL_S)
                continue
            # The holder is gone (or the claim expired between the two calls): take it over, unless another
            # worker did so first, in which case look again at who holds it now.
            if await self._r.eval(_TAKE_OVER, 1, key, holder or "", self.worker_id, CTX_TTL_S):
                self._active.add(f"{what}:{request_id}")
                return Claim.ORPHANED

    async def claim_generation(self, request_id: str, streamed_key: str,
                               wait_until: float = 0.0) -> tuple[Claim, int, bool]:
        """(claim, epoch, streamed) of a request's generation in one round trip when the claim is free (the
        common case): the claim, a new epoch if it is this worker's, and whether the caller may have seen part
        of an answer (the hash field `streamed` of `streamed_key`). A contested claim takes the slow path (which
        waits for a live holder until `wait_until`)."""
        key = self.key("gen", request_id)
        won, epoch, streamed = await self._claim_generation(
            keys=[key, f"conflux:epoch:{request_id}", streamed_key, self.key("end", request_id)],
            args=[self.worker_id, CTX_TTL_S])
        if won == 2:  # ended since this replay began (the end mark is set before the claim is dropped)
            return Claim.DONE, 0, False
        if won:
            self._active.add(f"gen:{request_id}")
            return Claim.MINE, int(epoch), bool(streamed)
        claim = await self.claim("gen", request_id, wait_until)
        if claim in (Claim.BUSY, Claim.DONE):
            return claim, 0, False
        if await self.is_done("end", request_id):  # its holder ended the request while this replay waited
            await self.release("gen", request_id)
            return Claim.DONE, 0, False
        epoch = await self.new_epoch(request_id)
        return claim, epoch, bool(await self._r.hget(streamed_key, "streamed"))

    async def claim_end(self, request_id: str, ctx_key: str, ending: dict[str, bytes], wait_until: float = 0.0,
                        epoch: int | None = None) -> tuple[Claim, dict[bytes, bytes]]:
        """(claim, the context hash when it holds an earlier ending) of a request's end. The first ending
        recorded for a request is the one published, whoever publishes it: `ending` (its hash fields) is
        recorded in `ctx_key` with the claim, in one round trip when the claim is free, unless an earlier holder
        recorded one. That holder died or failed part-way and may have published any part of it, so the caller
        publishes it again rather than an ending of its own. An ending of the generation under `epoch` gets
        TAKEN_OVER once another worker has taken that generation over: a worker that stalled and resumed must
        not end the request it no longer holds."""
        key = self.key("end", request_id)
        fields = [x for kv in ending.items() for x in kv]
        won = await self._claim_end(keys=[key, ctx_key, f"conflux:epoch:{request_id}"],
                                    args=[self.worker_id, CTX_TTL_S, RECORDED, "" if epoch is None else epoch, *fields])
        if won == 3:
            return Claim.TAKEN_OVER, {}
        if won:
            self._active.add(f"end:{request_id}")
            return Claim.MINE, (await self._r.hgetall(ctx_key) if won == 2 else {})
        claim = await self.claim("end", request_id, wait_until)
        if claim in (Claim.BUSY, Claim.DONE):
            return claim, {}
        left = await self._r.hgetall(ctx_key)
        if RECORDED.encode() in left:
            return claim, left
        async with self._r.pipeline(transaction=False) as pipe:  # one round trip
            pipe.hset(ctx_key, mapping=ending)
            pipe.expire(ctx_key, CTX_TTL_S)
            await pipe.execute()
        return claim, {}

    async def new_epoch(self, request_id: str) -> int:
        """Fences a generation: called by whoever now holds its claim, before it sends anything. Chunks carry
        their epoch and the edge drops those of an older one, so a worker that stalled (not died) and resumes
        after a takeover cannot reach the caller, whatever order its chunks arrive in."""
        key = f"conflux:epoch:{request_id}"
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, CTX_TTL_S)
            epoch, _ = await pipe.execute()
        return int(epoch)

    async def done(self, what: str, request_id: str) -> None:
        await self._r.set(f"conflux:once:{what}:{request_id}", "done", ex=self.done_ttl_s)
        self._active.discard(f"{what}:{request_id}")

    async def ended(self, request_id: str, *drop: str) -> None:
        """The request has ended: its end is marked done (which alone stops replays from here on), its
        generation claim, its epoch and the given keys are dropped, in one round trip. (Kept until their TTL,
        the epochs made Redis grow 12% over the 10-minute soak.) With the epoch gone, a stalled worker that
        resumes finds the end marked done and sends nothing; the edge has closed the stream already."""
        self._active.discard(f"end:{request_id}")
        self._active.discard(f"gen:{request_id}")
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.set(f"conflux:once:end:{request_id}", "done", ex=self.done_ttl_s)
            pipe.delete(f"conflux:once:gen:{request_id}", f"conflux:epoch:{request_id}", *drop)
            await pipe.execute()

    async def release(self, what: str, request_id: str) -> None:
        """This process gives up without finishing (it failed): the claim is dropped so a replay can take it."""
        key = f"conflux:once:{what}:{request_id}"
        self._active.discard(f"{what}:{request_id}")
        if await self._r.get(key) in (self.worker_id, self.worker_id.encode()):
            await self._r.delete(key)

    async def is_done(self, what: str, request_id: str) -> bool:
        return await self._r.get(f"conflux:once:{what}:{request_id}") in (b"done", "done")

    async def _alive(self, holder: str, item: str) -> bool:
        if holder == self.worker_id:
            # Same id: this process if it is working on it now, else a previous incarnation that died.
            return item in self._active
        return bool(await self._r.exists(f"conflux:worker:{holder}:heartbeat"))
