"""Kafka wiring shared by every Conflux process: producers that do not lose acknowledged events,
consumers that commit only what they processed, and typed event publishing."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)
from opentelemetry import trace

from conflux.errors import PublishError
from conflux.kafka_access import KafkaAccess
from conflux.serde import AvroSerde, dead_letter_record, new_envelope
from conflux.telemetry import Headers, inject_headers, traceparent_of
from conflux.topics import Catalogue

log = logging.getLogger("conflux.kafka")
T = TypeVar("T")
# After one of these aiokafka's sender task has ended for good (aiokafka/producer/sender.py re-raises them) and
# every later send of that producer fails the same way. The usual cause: sends that timed out while the broker
# was away had used sequence numbers, so the restarted broker sees a gap. A new producer gets a new producer
# id, and with it new sequences.
PRODUCER_FATAL = (OutOfOrderSequenceNumber, ProducerFenced, UnknownProducerId, InvalidProducerEpoch)


def make_producer(kafka: KafkaAccess | str, *, transactional_id: str | None = None,
                  **overrides: Any) -> AIOKafkaProducer:
    """acks=all + idempotence: an acknowledged event is on disk once and only once."""
    opts: dict[str, Any] = {
        **KafkaAccess.of(kafka).client_options(),
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": 30000,
        "compression_type": None,
    }
    if transactional_id:
        opts["transactional_id"] = transactional_id
    opts.update(overrides)
    return AIOKafkaProducer(**opts)


class ManagedProducer:
    """A process's one Kafka producer, replaced by a new one when aiokafka declares it unusable, so that a
    broker restart does not leave a running service that can no longer publish anything."""

    def __init__(self, factory: Callable[[], AIOKafkaProducer]) -> None:
        self._factory = factory
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self.replacements = 0

    @classmethod
    def of(cls, kafka: KafkaAccess | str, **overrides: Any) -> ManagedProducer:
        return cls(lambda: make_producer(kafka, **overrides))

    async def start(self) -> None:
        producer = self._factory()
        await producer.start()
        self._producer = producer

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            await producer.stop()

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                   partition: int | None = None, headers: Headers | None = None) -> asyncio.Future[Any]:
        """Enqueues; the returned future resolves when the broker acknowledges (ordering per partition)."""
        return await self._on_live(lambda p: p.send(topic, value=value, key=key, partition=partition,
                                                     headers=headers))

    async def send_and_wait(self, topic: str, value: bytes | None = None, key: bytes | None = None,
                            partition: int | None = None, headers: Headers | None = None) -> Any:
        return await self._on_live(lambda p: p.send_and_wait(topic, value=value, key=key, partition=partition,
                                                              headers=headers))

    async def _on_live(self, op: Callable[[AIOKafkaProducer], Awaitable[T]]) -> T:
        producer = self._current()
        try:
            return await op(producer)
        except KafkaError as exc:
            fatal = isinstance(exc, PRODUCER_FATAL)
            if not fatal and not _sender_ended(producer):
                raise  # the producer is fine (a timeout, the broker away): the caller decides
            fresh = await self._replace(producer, exc)
            if not fatal:
                raise  # an unknown error: this send may or may not have landed, so it is not repeated here
        # Sending again cannot duplicate: a send failed this way was refused by the broker or never queued.
        return await op(fresh)

    def _current(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise PublishError("the Kafka producer is not started")
        return self._producer

    async def _replace(self, dead: AIOKafkaProducer, exc: Exception) -> AIOKafkaProducer:
        async with self._lock:  # concurrent sends fail together; the first replaces the producer, the rest use it
            current = self._current()
            if current is not dead:
                return current
            log.warning("Kafka producer unusable (%r); replacing it with a new producer id", exc)
            fresh = self._factory()
            try:
                await fresh.start()
            except BaseException:
                await fresh.stop()
                raise
            self._producer = fresh
            self.replacements += 1
        try:
            await asyncio.wait_for(current.stop(), 5)
        except (TimeoutError, KafkaError) as stop_exc:  # its sends have all failed already; nothing is lost
            log.warning("the replaced producer did not close cleanly: %r", stop_exc)
        return fresh


def _sender_ended(producer: AIOKafkaProducer) -> bool:
    """aiokafka has no public "still usable" flag. Its sender task ends only on stop() or on an error it does
    not recover from, after which every send fails."""
    task = getattr(getattr(producer, "_sender", None), "sender_task", None)
    return task is not None and task.done() and not getattr(producer, "_closed", False)


def make_consumer(kafka: KafkaAccess | str, group_id: str | None, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    """Manual commits (after processing) and committed-only reads, for at-least-once with no ghosts."""
    opts: dict[str, Any] = {
        **KafkaAccess.of(kafka).client_options(),
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
    }
    opts.update(overrides)
    return AIOKafkaConsumer(*topics, **opts)


@dataclass(frozen=True)
class Delivered:
    topic: str
    partition: int
    offset: int


class EventPublisher:
    """Encodes an event against its topic's schema and sends it with trace headers; returns where it landed."""

    def __init__(self, producer: ManagedProducer, serde: AvroSerde, catalogue: Catalogue,
                 tracer: trace.Tracer | None = None, timeout_s: float | None = None) -> None:
        self._producer = producer
        # None: wait as long as the producer's own request timeout. The edge sets a few seconds, so a caller
        # learns the broker is down (503) instead of waiting.
        self._timeout_s = timeout_s
        self._serde = serde
        self._catalogue = catalogue
        self._tracer = tracer or trace.get_tracer("conflux.kafka")

    async def publish(self, topic: str, record: dict[str, Any], key: str | None = None,
                      headers: Headers | None = None, schema: str | None = None,
                      partition: int | None = None) -> Delivered:
        schema_name = schema or self._catalogue.get(topic).schema
        with self._tracer.start_as_current_span(f"{topic} publish", kind=trace.SpanKind.PRODUCER) as span:
            out_headers = inject_headers(headers)
            envelope = record.get("envelope")
            if isinstance(envelope, dict) and not envelope.get("traceparent"):
                # The envelope repeats the header so the trace survives sinks that drop headers.
                record = {**record, "envelope": {**envelope, "traceparent": traceparent_of(out_headers)}}
            value = self._serde.encode(schema_name, record)
            t0 = time.monotonic()
            try:
                meta = await asyncio.wait_for(self._producer.send_and_wait(
                    topic, value=value, key=key.encode() if key is not None else None, headers=out_headers,
                    partition=partition), self._timeout_s)
            except (TimeoutError, KafkaError) as exc:
                raise PublishError(f"the event broker did not acknowledge {topic} "
                                   f"({time.monotonic() - t0:.1f}s): {exc!r}") from exc
            span.set_attribute("messaging.destination.name", topic)
            span.set_attribute("messaging.kafka.destination.partition", meta.partition)
            return Delivered(meta.topic, meta.partition, meta.offset)

    async def enqueue(self, topic: str, record: dict[str, Any], key: str | None = None,
                      headers: Headers | None = None) -> asyncio.Future[Any]:
        """Encodes and hands the event to the producer without waiting for the broker; the returned future
        resolves on acknowledgement. Many events of one request then share a few produce requests instead of
        paying a round trip each (see PendingEvents)."""
        # No span of its own: the event belongs to the stage span that is current (one span per stage), and
        # a span per event cost more CPU than the event's encoding.
        out_headers = inject_headers(headers)
        envelope = record.get("envelope")
        if isinstance(envelope, dict) and not envelope.get("traceparent"):
            record = {**record, "envelope": {**envelope, "traceparent": traceparent_of(out_headers)}}
        value = self._serde.encode(self._catalogue.get(topic).schema, record)
        try:
            return await self._producer.send(topic, value=value, key=key.encode() if key is not None else None,
                                             headers=out_headers)
        except KafkaError as exc:
            raise PublishError(f"the event broker refused {topic}: {exc!r}") from exc

    async def publish_undecodable(self, msg: Any, exc: Exception, *, consumer: str, producer: str) -> Delivered:
        """A consumed message that could not be decoded, byte for byte with the reason, to the dead-letter
        topic; no request can be attributed to it, so the envelope's ids are empty."""
        envelope = new_envelope(tenant_id="", conversation_id="", request_id="", producer=producer)
        return await self.publish("conflux.deadletter", dead_letter_record(
            envelope, topic=msg.topic, partition=msg.partition, offset=msg.offset, consumer=consumer, exc=exc,
            payload=msg.value, key=msg.key, headers=list(msg.headers or [])), key=msg.topic)


class PendingEvents:
    """A request's events in flight: sent without waiting, acknowledged together by `settle`, which the
    pipeline calls before the request's final chunk leaves and before its input offset can be committed.
    Bounded by the request itself (a dozen events), so it needs no cap of its own."""

    def __init__(self, publisher: EventPublisher, timeout_s: float = 30.0) -> None:
        self._publisher = publisher
        self._timeout_s = timeout_s
        self._futures: list[asyncio.Future[Any]] = []

    @property
    def publisher(self) -> EventPublisher:
        return self._publisher

    async def add(self, topic: str, record: dict[str, Any], key: str | None = None) -> None:
        self._futures.append(await self._publisher.enqueue(topic, record, key=key))

    def track(self, future: asyncio.Future[Any]) -> None:
        """A send made elsewhere (a token chunk) that must be acknowledged with the rest."""
        self._futures.append(future)

    async def wait_open(self) -> None:
        """Returns when the request's output may reach its caller: at once here. A gate over a request whose
        input verdict is pending (streams/request.py, GatedEvents) returns only once the verdict allows it."""

    async def settle(self) -> None:
        """Waits for every event sent so far; PublishError if any was not acknowledged."""
        futures, self._futures = self._futures, []
        if not futures:
            return
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout_s):
                results = await asyncio.gather(*futures, return_exceptions=True)
        except TimeoutError as exc:
            raise PublishError(f"{len(futures)} events not acknowledged within {self._timeout_s:.0f}s") from exc
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise PublishError(f"{len(failed)} of {len(futures)} events not acknowledged "
                               f"({time.monotonic() - t0:.1f}s): {failed[0]!r}")
