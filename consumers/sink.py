"""ClickHouse sink: every catalogue topic into the `events` table, exactly one row per event id.

At-least-once from Kafka (offsets are committed only after the rows are in ClickHouse), exactly-once in
ClickHouse (ids already stored are dropped before each insert; ReplacingMergeTree is the backstop).
Batches close at `batch_rows` rows or `batch_ms`, whichever comes first, and on shutdown. While ClickHouse
is down the sink retries the same batch with backoff and reads nothing more, so memory stays bounded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from conflux.clickhouse import clickhouse_client
from conflux.config import Settings
from conflux.errors import DecodeError
from conflux.kafka import EventPublisher, ManagedProducer, make_consumer
from conflux.promserve import Metrics, serve_metrics
from conflux.redis_client import redis_client
from conflux.schemas import SchemaRegistry
from conflux.serde import AvroSerde, json_default
from conflux.topics import Catalogue, load_catalogue
from consumers import migrations

log = logging.getLogger("conflux.sink")
GROUP = "conflux-clickhouse-sink"
COLUMNS = ["event_id", "event_type", "topic", "event_time", "tenant_id", "conversation_id", "request_id",
           "traceparent", "schema_version", "producer", "body", "kafka_partition", "kafka_offset"]


def to_row(event_type: str, topic: str, partition: int, offset: int, record: dict[str, Any]) -> list[Any]:
    env = record["envelope"]
    return [env["event_id"], event_type, topic, env["event_time"], env["tenant_id"], env["conversation_id"],
            env["request_id"], env.get("traceparent") or "", env["schema_version"], env.get("producer") or "",
            json.dumps(record, default=json_default, separators=(",", ":")), partition, offset]


@dataclass
class Batch:
    rows: list[list[Any]] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)  # next offset to commit
    opened: float | None = None  # when the first message of this batch arrived

    def add(self, tp: TopicPartition, offset: int, row: list[Any] | None) -> None:
        if self.opened is None:
            self.opened = time.monotonic()
        if row is not None:
            self.rows.append(row)
        self.offsets[tp] = offset + 1


class ClickHouseSink:
    def __init__(self, settings: Settings, *, batch_rows: int = 10_000, batch_ms: int = 1000,
                 instance: str | None = None) -> None:
        self.settings = settings
        self.batch_rows = batch_rows
        self.batch_ms = batch_ms
        self.instance = instance or f"sink-{os.getpid()}"
        self.registry = SchemaRegistry()
        self.serde = AvroSerde(self.registry)
        self.catalogue: Catalogue = load_catalogue(registry=self.registry)
        self.stored = 0
        self.metrics = Metrics("conflux_sink", {"instance": self.instance})
        self.ready = False  # migrations applied and the consumer started
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        client = await self._connect()
        topics = [t.name for t in self.catalogue.topics]
        # The broker holds a fetch until 256 KiB are there or 500 ms have passed: the sink batches by the second
        # anyway, and one fetch per token chunk under streaming load cost it and the broker more CPU than the
        # rows themselves.
        consumer = make_consumer(self.settings.kafka, GROUP, *topics, max_poll_interval_ms=600_000,
                                 isolation_level="read_uncommitted", fetch_min_bytes=256 * 1024,
                                 fetch_max_wait_ms=500)
        producer = ManagedProducer.of(self.settings.kafka)
        await consumer.start()
        await producer.start()
        self.ready = True
        publisher = EventPublisher(producer, self.serde, self.catalogue)
        batch = Batch()
        try:
            while not self._stop.is_set():
                # An empty batch has no deadline: wait for data in 200 ms polls (an idle sink that polled every
                # millisecond once its first deadline had passed cost 13% of a core and the broker's time).
                age = time.monotonic() - batch.opened if batch.opened is not None else 0.0
                due = self.batch_ms / 1000 - age
                records = await consumer.getmany(timeout_ms=max(1, int(min(due, 0.2) * 1000)),
                                                 max_records=self.batch_rows - len(batch.rows))
                for tp, msgs in records.items():
                    for msg in msgs:
                        batch.add(tp, msg.offset, await self._row(publisher, tp, msg))
                if len(batch.rows) >= self.batch_rows or (batch.offsets and due <= 0):
                    await self._flush(client, consumer, batch)
                    batch = Batch()
            if batch.offsets:
                await self._flush(client, consumer, batch)  # shutdown: nothing read is left behind
        finally:
            await consumer.stop()
            await producer.stop()
            client.close()

    async def _connect(self) -> Any:
        delay = 0.5
        while True:
            try:
                client = await asyncio.to_thread(clickhouse_client, self.settings)
                applied = await asyncio.to_thread(migrations.apply, client)
                if applied:
                    log.info("applied migrations: %s", ", ".join(applied))
                return client
            except Exception as exc:  # noqa: BLE001 - ClickHouse down at start: wait for it, lose nothing
                log.warning("ClickHouse not ready (%r); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)

    async def _row(self, publisher: EventPublisher, tp: TopicPartition, msg: Any) -> list[Any] | None:
        try:
            decoded = self.serde.decode(msg.value or b"", expected=self.catalogue.get(tp.topic).schema)
        except DecodeError as exc:
            self.metrics.inc("dead_letters_total", help_text="messages that could not be decoded", topic=tp.topic)
            if tp.topic == "conflux.deadletter":
                log.error("undecodable dead letter at %s[%s]@%s: %s", tp.topic, tp.partition, msg.offset, exc)
                return None
            await publisher.publish_undecodable(msg, exc, consumer="clickhouse-sink", producer=self.instance)
            return None
        return to_row(decoded.name, tp.topic, tp.partition, msg.offset, decoded.record)

    async def _flush(self, client: Any, consumer: Any, batch: Batch) -> None:
        delay = 0.5
        while True:
            try:
                written = await asyncio.to_thread(self._insert_new, client, batch.rows)
                break
            except Exception as exc:  # noqa: BLE001 - any ClickHouse failure: keep the batch, retry, commit nothing
                self.metrics.inc("insert_retries_total", help_text="failed inserts retried")
                log.warning("insert of %d rows failed (%r); retrying in %.1fs", len(batch.rows), exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
        try:
            await consumer.commit(batch.offsets)
        except KafkaError as exc:
            # The rows are stored: an uncommitted batch is read again later and dropped as known ids.
            log.warning("offset commit failed (%r); the batch will be re-read and deduplicated", exc)
        self.stored += written
        self.metrics.inc("rows_stored_total", written, help_text="rows inserted into ClickHouse")
        self.metrics.inc("messages_read_total", len(batch.rows), help_text="messages consumed and decoded")
        self.metrics.inc("batches_total", help_text="batches flushed")

    @staticmethod
    def _insert_new(client: Any, rows: list[list[Any]]) -> int:
        if not rows:
            return 0
        ids = list({r[0] for r in rows})
        known: set[str] = set()
        for i in range(0, len(ids), 5000):
            chunk = ids[i:i + 5000]
            known |= {str(r[0]) for r in client.query(
                "SELECT event_id FROM events WHERE event_id IN %(ids)s", parameters={"ids": chunk}).result_rows}
        fresh, seen = [], set()
        for r in rows:
            if r[0] not in known and r[0] not in seen:  # also duplicates within the batch
                seen.add(r[0])
                fresh.append(r)
        if fresh:
            client.insert("events", fresh, column_names=COLUMNS)
        return len(fresh)


async def heartbeat(settings: Settings, sink: ClickHouseSink, name: str) -> None:
    """`conflux status` reads this key: the sink's loop is alive (the value names its process)."""

    r = redis_client(settings.redis_url, settings.redis_password)
    try:
        while True:
            try:
                if sink.ready:
                    await r.set(f"conflux:sink:{name}:heartbeat", str(os.getpid()), ex=10)
            except Exception as exc:  # noqa: BLE001 - a missing heartbeat is the report
                log.warning("heartbeat failed: %r", exc)
            await asyncio.sleep(2)
    finally:
        await r.aclose()


def run_sink(settings: Settings, name: str = "sink-1", metrics_port: int = 0) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        sink = ClickHouseSink(settings, instance=name)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, sink.stop)
        beat = asyncio.create_task(heartbeat(settings, sink, name))
        server = await serve_metrics(metrics_port, sink.metrics.render, settings.metrics_host) \
            if metrics_port else None
        try:
            await sink.run()
        finally:
            beat.cancel()
            if server:
                server.close()
        log.info("stopped after storing %d rows", sink.stored)

    asyncio.run(main())
