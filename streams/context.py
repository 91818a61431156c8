"""What of a request must outlive the worker running it, in Redis (TTL-bound, so memory cannot grow with
uptime): the streamed mark, the cancel flag, and the conversation's session memory. Everything else about a
request lives in the worker's memory (streams/request.py)."""

from __future__ import annotations

import json
from typing import Any

from conflux.serde import json_default

CTX_TTL_S = 900


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

    async def memory(self, tenant_id: str, conversation_id: str, limit: int) -> list[dict[str, str]]:
        """Earlier turns of this conversation, oldest first."""
        raw = await self._r.lrange(f"conflux:memory:{tenant_id}:{conversation_id}", -limit, -1)
        return [json.loads(x) for x in raw]

    async def remember(self, tenant_id: str, conversation_id: str, turns: list[dict[str, str]],
                       keep: int = 40, ttl_s: int = 7 * 24 * 3600) -> None:
        key = f"conflux:memory:{tenant_id}:{conversation_id}"
        async with self._r.pipeline(transaction=False) as pipe:  # one round trip
            pipe.rpush(key, *[json.dumps(t) for t in turns])
            pipe.ltrim(key, -keep, -1)  # bounded: only the latest turns are kept
            pipe.expire(key, ttl_s)
            await pipe.execute()
