"""Apache Kafka: idempotent producer, transactions, the topic catalogue, and no loss on SIGKILL."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from conflux.config import Settings
from conflux.kafka import make_consumer, make_producer
from conflux.stack import manager
from conflux.topics import apply_topics, load_catalogue


async def _drain(consumer: AIOKafkaConsumer, idle_ms: int = 1500) -> list[bytes]:
    out: list[bytes] = []
    while True:
        batch = await consumer.getmany(timeout_ms=idle_ms)
        if not batch:
            return out
        for msgs in batch.values():
            out += [m.value for m in msgs if m.value is not None]


async def test_idempotent_producer_writes_each_message_once(stack: Settings, scratch_topic: str) -> None:
    producer = make_producer(stack.kafka_bootstrap)  # enable_idempotence=True, acks=all
    await producer.start()
    try:
        futures = [await producer.send(scratch_topic, f"m{i}".encode(), key=b"k") for i in range(500)]
        metas = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    assert len({(m.partition, m.offset) for m in metas}) == 500
    consumer = make_consumer(stack.kafka_bootstrap, None, scratch_topic)
    await consumer.start()
    try:
        values = await _drain(consumer)
    finally:
        await consumer.stop()
    assert sorted(values) == sorted(f"m{i}".encode() for i in range(500))


async def test_transactions_commit_and_abort(stack: Settings, scratch_topic: str) -> None:
    producer = make_producer(stack.kafka_bootstrap, transactional_id=f"test-tx-{uuid.uuid4().hex[:8]}")
    await producer.start()
    try:
        async with producer.transaction():
            for i in range(5):
                await producer.send(scratch_topic, f"committed-{i}".encode())
        await producer.begin_transaction()
        for i in range(5):
            await producer.send(scratch_topic, f"aborted-{i}".encode())
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send(scratch_topic, b"after-abort")
    finally:
        await producer.stop()
    committed = make_consumer(stack.kafka_bootstrap, None, scratch_topic)  # read_committed
    uncommitted = make_consumer(stack.kafka_bootstrap, None, scratch_topic, isolation_level="read_uncommitted")
    await committed.start()
    await uncommitted.start()
    try:
        seen = await _drain(committed)
        raw = await _drain(uncommitted)
    finally:
        await committed.stop()
        await uncommitted.stop()
    assert sorted(seen) == sorted([f"committed-{i}".encode() for i in range(5)] + [b"after-abort"])
    assert sum(v.startswith(b"aborted") for v in raw) == 5  # the aborted records are in the log, hidden


async def test_catalogue_is_applied_idempotently_with_its_configs(stack: Settings) -> None:
    catalogue = load_catalogue()
    again = await apply_topics(stack.kafka_bootstrap, catalogue.topics)
    assert again.created == [] and again.altered == [] and again.grown == []
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        described = {d["topic"]: d for d in await admin.describe_topics([t.name for t in catalogue.topics])}
        resp = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t.name) for t in catalogue.topics])
    finally:
        await admin.close()
    configs = {res[3]: {e[0]: e[1] for e in res[4]} for r in resp for res in r.resources}
    for t in catalogue.topics:
        assert len(described[t.name]["partitions"]) == t.partitions, t.name
        assert configs[t.name]["retention.ms"] == str(t.retention_ms), t.name
        assert configs[t.name]["cleanup.policy"] == t.cleanup_policy, t.name


async def test_no_acknowledged_message_is_lost_when_the_broker_is_killed(
        stack: Settings, scratch_topic: str) -> None:
    producer = make_producer(stack.kafka_bootstrap, linger_ms=2)
    await producer.start()
    acked: list[bytes] = []
    try:
        for batch in range(20):
            futures = [await producer.send(scratch_topic, f"durable-{batch}-{i}".encode()) for i in range(100)]
            for i, fut in enumerate(futures):
                await fut  # acks=all: this message is acknowledged
                acked.append(f"durable-{batch}-{i}".encode())
    finally:
        await producer.stop()

    kafka = manager.by_name(stack, "kafka")
    kafka.kill()  # SIGKILL: no shutdown hook, no flush
    assert kafka.pid() is None
    report = await asyncio.to_thread(manager.up, stack, lambda m: None, ["kafka"])
    assert report.started == ["kafka"]

    consumer = make_consumer(stack.kafka_bootstrap, None)
    await consumer.start()
    try:
        parts = [TopicPartition(scratch_topic, p) for p in (0, 1)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        values = await _drain(consumer, idle_ms=3000)
    finally:
        await consumer.stop()
    assert len(acked) == 2000
    assert set(values) == set(acked), f"lost {len(set(acked) - set(values))} acknowledged messages"
