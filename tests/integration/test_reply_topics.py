"""Reply topics of edges that are gone are deleted once their edge has been silent for the grace period; a
running edge's topic never is (real Kafka and Redis, the running edge's heartbeat)."""

from __future__ import annotations

import asyncio
import time
import uuid

import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from conflux.config import Settings
from conflux.reply_topics import PREFIX, prune


async def _topics(stack: Settings) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def _create(stack: Settings, name: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1)])
    finally:
        await admin.close()


def test_a_gone_edges_reply_topic_is_deleted_after_the_grace_period_and_a_live_ones_never(stack: Settings) -> None:
    async def run() -> None:
        redis = aioredis.Redis.from_url(stack.redis_url)
        try:
            live = [k.decode().split(":", 2)[2] async for k in redis.scan_iter(match="conflux:edge:*")]
            assert live, "the running edge keeps a heartbeat"
            gone = f"{PREFIX}edge-gone-{uuid.uuid4().hex[:8]}"
            await _create(stack, gone)
            now = time.time()
            first = await prune(stack.kafka_bootstrap, redis, grace_s=600, now=now)
            assert gone in first.waiting and gone not in first.deleted
            # Every edge beating with a topic on this broker is live (an edge of another broker, such as the SASL
            # test's, may share this Redis for a while).
            assert {f"{PREFIX}{e}" for e in live} & await _topics(stack) <= set(first.live)
            later = await prune(stack.kafka_bootstrap, redis, grace_s=600, now=now + 601)
            assert gone in later.deleted and not set(later.deleted) & set(first.live)
            topics = await _topics(stack)
            assert gone not in topics and {f"{PREFIX}{e}" for e in live} <= topics
        finally:
            await redis.aclose()

    asyncio.run(run())
