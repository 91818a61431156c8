"""Kafka wiring shared by every Conflux process: producers that do not lose acknowledged events,
consumers that commit only what they processed, and typed event publishing."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from opentelemetry import trace

from conflux.errors import PublishError
from conflux.serde import AvroSerde, dead_letter_record, new_envelope
from conflux.telemetry import Headers, inject_headers, traceparent_of
from conflux.topics import Catalogue


def make_producer(bootstrap: str, *, transactional_id: str | None = None, **overrides: Any) -> AIOKafkaProducer:
    """acks=all + idempotence: an acknowledged event is on disk once and only once."""
    opts: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
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


def make_consumer(bootstrap: str, group_id: str | None, *topics: str, **overrides: Any) -> AIOKafkaConsumer:
    """Manual commits (after processing) and committed-only reads, for at-least-once with no ghosts."""
    opts: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
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

    def __init__(self, producer: AIOKafkaProducer, serde: AvroSerde, catalogue: Catalogue,
                 tracer: trace.Tracer | None = None, timeout_s: float | None = None) -> None:
        self._producer = producer
        # None: wait as long as the producer's own request timeout. The edge sets a few seconds, so a caller
        # learns the broker is down (503) instead of waiting.
        self._timeout_s = timeout_s
        self._serde = serde
        self._catalogue = catalogue
        self._tracer = tracer or trace.get_tracer("conflux.kafka")

    async def publish(self, topic: str, record: dict[str, Any], key: str | None = None,
                      headers: Headers | None = None, schema: str | None = None) -> Delivered:
        schema_name = schema or self._catalogue.get(topic).schema
        with self._tracer.start_as_current_span(f"{topic} publish", kind=trace.SpanKind.PRODUCER) as span:
            out_headers = inject_headers(headers)
            envelope = record.get("envelope")
            if isinstance(envelope, dict) and not envelope.get("traceparent"):
                # The envelope repeats the header so the trace survives sinks that drop headers.
                record = {**record, "envelope": {**envelope, "traceparent": traceparent_of(out_headers)}}
            value = self._serde.encode(schema_name, record)
            try:
                meta = await asyncio.wait_for(self._producer.send_and_wait(
                    topic, value=value, key=key.encode() if key is not None else None, headers=out_headers),
                    self._timeout_s)
            except (TimeoutError, KafkaError) as exc:
                raise PublishError(f"the event broker did not acknowledge {topic} in time: {exc!r}") from exc
            span.set_attribute("messaging.destination.name", topic)
            span.set_attribute("messaging.kafka.destination.partition", meta.partition)
            return Delivered(meta.topic, meta.partition, meta.offset)

    async def publish_undecodable(self, msg: Any, exc: Exception, *, consumer: str, producer: str) -> Delivered:
        """A consumed message that could not be decoded, byte for byte with the reason, to the dead-letter
        topic; no request can be attributed to it, so the envelope's ids are empty."""
        envelope = new_envelope(tenant_id="", conversation_id="", request_id="", producer=producer)
        return await self.publish("conflux.deadletter", dead_letter_record(
            envelope, topic=msg.topic, partition=msg.partition, offset=msg.offset, consumer=consumer, exc=exc,
            payload=msg.value, key=msg.key, headers=list(msg.headers or [])), key=msg.topic)
