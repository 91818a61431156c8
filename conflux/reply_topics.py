"""The reply topics of edges that are gone.

Each edge owns `chat.replies.<edge id>`, created when it starts, and keeps a heartbeat key in Redis while it
runs (`heartbeat`). An edge that goes away (stopped, killed, its pod evicted or rescheduled) leaves its topic
behind, and a new edge never reuses it: its id is new. `prune` deletes the reply topics whose edge has sent no
heartbeat for `grace_s` (10 minutes by default, far past any request: the chain gives up after 60 s), so no
worker is still writing to a topic it deletes. It is safe to run anywhere, any number of times:
`conflux topics prune-replies`, on a schedule in Kubernetes (infra/k8s/prune-replies.yaml).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from conflux.kafka_access import KafkaAccess

log = logging.getLogger("conflux.topics")
PREFIX = "chat.replies."  # infra/topics.toml: chat.replies.{edge_id}
BEAT_EVERY_S = 10.0
BEAT_TTL_S = 60  # several beats: a slow loop or a Redis blip is not a departure
GRACE_S = 600.0


def _alive(edge_id: str) -> str:
    return f"conflux:edge:{edge_id}"


def _gone(edge_id: str) -> str:
    return f"conflux:edge-gone:{edge_id}"  # when a prune first saw the edge without a heartbeat


async def heartbeat(redis: Any, edge_id: str, every_s: float = BEAT_EVERY_S) -> None:
    """Runs until cancelled: the edge's sign of life. Redis failures are logged and retried. Cancelled (the
    edge shuts down cleanly), it removes its key, so the grace period starts now instead of at the key's expiry;
    an edge that comes back under the same id beats again and a prune then forgets it was away."""
    try:
        while True:
            try:
                await redis.set(_alive(edge_id), str(time.time()), ex=BEAT_TTL_S)
            except RedisError as exc:
                log.warning("edge heartbeat not written: %r", exc)
            await asyncio.sleep(every_s)
    finally:
        with contextlib.suppress(RedisError, OSError):
            await redis.delete(_alive(edge_id))


@dataclass
class Pruned:
    deleted: list[str] = field(default_factory=list)  # their edges gone for the grace period
    waiting: list[str] = field(default_factory=list)  # edges gone, not yet for the grace period
    live: list[str] = field(default_factory=list)


async def prune(kafka: KafkaAccess | str, redis: Any, grace_s: float = GRACE_S, now: float | None = None) -> Pruned:
    """Deletes the reply topics of edges without a heartbeat for grace_s seconds (0: at once)."""
    from aiokafka.admin import AIOKafkaAdminClient

    now = time.time() if now is None else now
    out = Pruned()
    admin = AIOKafkaAdminClient(**KafkaAccess.of(kafka).client_options(), request_timeout_ms=15000)
    await admin.start()
    try:
        for topic in sorted(t for t in await admin.list_topics() if t.startswith(PREFIX)):
            edge_id = topic[len(PREFIX):]
            if await redis.exists(_alive(edge_id)):
                await redis.delete(_gone(edge_id))  # back (or never away): the clock starts again
                out.live.append(topic)
                continue
            await redis.set(_gone(edge_id), str(now), nx=True, ex=int(max(grace_s, 0) * 4) + 3600)
            since = float(await redis.get(_gone(edge_id)) or now)
            (out.deleted if now - since >= grace_s else out.waiting).append(topic)
        if out.deleted:
            await admin.delete_topics(out.deleted)
            await redis.delete(*(_gone(t[len(PREFIX):]) for t in out.deleted))
    finally:
        await admin.close()
    return out
