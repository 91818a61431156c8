"""What of a request must outlive the worker running it, in Redis (TTL-bound, so memory cannot grow with
uptime): the streamed mark, the cancel flag, and the conversation's session memory. Everything else about a
request lives in the worker's memory (streams/request.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from conflux.serde import json_default

CTX_TTL_S = 900
CANCEL_CHECK_EVERY = 8  # pieces at least between two looks at the cancel flag (a Redis round trip each)
CANCEL_CHECK_S = 0.05  # and seconds at least: a fast stream is not asked every few milliseconds


class ContextStore:
    def __init__(self, redis: Any) -> None:
        self._r = redis

    @staticmethod
    def key(request_id: str) -> str:
        return f"conflux:ctx:{request_id}"

    async def put(self, request_id: str, **fields: Any) -> None:
        key = self.key(request_id)
        async with self._r.pipeline(transaction=False) as pipe:  # one round trip
            pipe.hset(key, mapping={k: json.dumps(v, default=json_default) for k, v in fields.items()})
            pipe.expire(key, CTX_TTL_S)
            await pipe.execute()

    async def cancelled(self, request_id: str) -> bool:
        return bool(await self._r.exists(f"conflux:cancel:{request_id}"))

    @staticmethod
    def memory_key(tenant_id: str, conversation_id: str) -> str:
        return f"conflux:memory:{tenant_id}:{conversation_id}"

    @staticmethod
    def turns(raw: list[bytes]) -> list[dict[str, str]]:
        """Session memory as read from its list (LRANGE), oldest first."""
        return [json.loads(x) for x in raw]

    async def memory(self, tenant_id: str, conversation_id: str, limit: int) -> list[dict[str, str]]:
        """Earlier turns of this conversation, oldest first."""
        return self.turns(await self._r.lrange(self.memory_key(tenant_id, conversation_id), -limit, -1))

    async def remember(self, tenant_id: str, conversation_id: str, turns: list[dict[str, str]],
                       keep: int = 40, ttl_s: int = 7 * 24 * 3600) -> None:
        key = self.memory_key(tenant_id, conversation_id)
        async with self._r.pipeline(transaction=False) as pipe:  # one round trip
            pipe.rpush(key, *[json.dumps(t) for t in turns])
            pipe.ltrim(key, -keep, -1)  # bounded: only the latest turns are kept
            pipe.expire(key, ttl_s)
            await pipe.execute()


class CancelWatch:
    """Whether the caller cancelled (disconnected), looked up at most every CANCEL_CHECK_EVERY pieces and
    CANCEL_CHECK_S seconds of a stream: a slow model is asked every 8 pieces as before; a fast one (the echo
    model streams 16 pieces in a few milliseconds) is not asked for each 8 of them, since a cancel noticed 50
    ms later stops it just as well."""

    def __init__(self, ctx: ContextStore, request_id: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._ctx = ctx
        self._request_id = request_id
        self._clock = clock
        self._pieces = 0
        self._last = clock()

    async def cancelled(self) -> bool:
        """Call once per piece."""
        self._pieces += 1
        if self._pieces < CANCEL_CHECK_EVERY or self._clock() - self._last < CANCEL_CHECK_S:
            return False
        self._pieces, self._last = 0, self._clock()
        return await self._ctx.cancelled(self._request_id)
