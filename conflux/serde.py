"""Avro single-object encoding (Avro specification, "Single object encoding").

Wire format of every Kafka value: C3 01 | 8-byte little-endian CRC-64-AVRO fingerprint of the writer
schema's Parsing Canonical Form | Avro binary body. Any stock Avro library decodes it with the .avsc
files in schemas/. Decoding never raises anything but a DecodeError subclass.
"""

from __future__ import annotations

import base64
import io
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.validation import ValidationError, validate

from conflux.errors import (
    DecodeError,
    EncodeError,
    MalformedPayloadError,
    NotSingleObjectError,
    UnknownSchemaError,
)
from conflux.schemas import SchemaRegistry

MAGIC = b"\xc3\x01"
HEADER_LEN = 10
# A single event is a chat turn or a document, never more: bigger bytes are a bug or an attack.
MAX_EVENT_BYTES = 8 * 1024 * 1024


class WrongEventError(DecodeError):
    """The bytes are a valid event, but not of the type this topic carries."""


@dataclass(frozen=True)
class Decoded:
    name: str  # event name, e.g. "prompt_submitted"
    writer_version: int
    record: dict[str, Any]


def new_envelope(
    *,
    tenant_id: str,
    conversation_id: str,
    request_id: str,
    producer: str,
    traceparent: str | None = None,
    tracestate: str | None = None,
) -> dict[str, Any]:
    """An envelope with a fresh event id and the current time; schema_version is set on encode."""
    return {
        "event_id": str(uuid.uuid4()),
        "event_time": datetime.now(UTC),
        "tenant_id": tenant_id,
        "conversation_id": conversation_id,
        "request_id": request_id,
        "traceparent": traceparent,
        "tracestate": tracestate,
        "schema_version": 0,
        "producer": producer,
    }


def json_default(value: object) -> str:
    """json.dumps default for decoded records: datetimes as ISO 8601, bytes as base64."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode()
    raise TypeError(f"cannot serialise {type(value).__name__}")


DEAD_LETTER_PAYLOAD_MAX = 256 * 1024


def dead_letter_record(envelope: dict[str, Any], *, topic: str, partition: int, offset: int, consumer: str,
                       exc: BaseException, payload: bytes | None, key: bytes | None,
                       headers: list[tuple[str, bytes]] | None) -> dict[str, Any]:
    """A DeadLetter event: the message byte for byte, where it came from, who gave up on it and why. A payload
    over DEAD_LETTER_PAYLOAD_MAX is cut (and the reason says so): the dead letter must itself fit in a Kafka
    message; the original stays at its source offset for the topic's retention."""
    reason = str(exc)[:2000]
    payload = payload or b""
    if len(payload) > DEAD_LETTER_PAYLOAD_MAX:
        reason += f" [payload of {len(payload)} bytes cut to its first {DEAD_LETTER_PAYLOAD_MAX}]"
        payload = payload[:DEAD_LETTER_PAYLOAD_MAX]
    return {"envelope": envelope, "source_topic": topic, "source_partition": partition, "source_offset": offset,
            "consumer": consumer, "error_type": type(exc).__name__, "reason": reason,
            "payload": payload, "key": key, "headers": {k: v for k, v in (headers or []) if v is not None}}


class AvroSerde:
    """Encodes and decodes events against a SchemaRegistry; stateless apart from it."""

    def __init__(self, registry: SchemaRegistry) -> None:
        self.registry = registry

    def encode(self, name: str, record: dict[str, Any]) -> bytes:
        schema = self.registry.get(name)
        envelope = record.get("envelope")
        if isinstance(envelope, dict):
            record = {**record, "envelope": {**envelope, "schema_version": max(schema.version, 1)}}
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(schema.fingerprint)
        try:
            # The writer itself refuses what does not fit the schema; the full validation (a tenth of a chat's
            # CPU when run on every event) runs only then, to say which field is wrong.
            schemaless_writer(buf, schema.parsed, record)
        except Exception as write_exc:  # any writer failure becomes a typed EncodeError
            try:
                validate(record, schema.parsed, raise_errors=True)
            except ValidationError as exc:
                errors = "; ".join(str(e) for e in exc.errors)
                raise EncodeError(f"{name}: record does not match schema: {errors}") from exc
            raise EncodeError(f"{name}: record does not match schema: {write_exc!r}") from write_exc
        return buf.getvalue()

    def decode(self, data: bytes, expected: str | None = None) -> Decoded:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise NotSingleObjectError(f"expected bytes, got {type(data).__name__}")
        data = bytes(data)
        if len(data) < HEADER_LEN or data[:2] != MAGIC:
            raise NotSingleObjectError(
                f"not an Avro single-object message ({len(data)} bytes, starts {data[:2].hex() or 'empty'})"
            )
        if len(data) > MAX_EVENT_BYTES:
            raise MalformedPayloadError(f"event of {len(data)} bytes exceeds the {MAX_EVENT_BYTES} limit")
        writer = self.registry.by_fingerprint(data[2:HEADER_LEN])
        if writer is None:
            raise UnknownSchemaError(f"unknown schema fingerprint {data[2:HEADER_LEN].hex()}")
        if expected is not None and writer.name != expected:
            raise WrongEventError(f"expected a {expected} event, got {writer.name}")
        reader = self.registry.get(writer.name)
        body = io.BytesIO(data[HEADER_LEN:])
        try:
            record = schemaless_reader(body, writer.parsed, reader.parsed)
        except (EOFError, ValueError, IndexError, TypeError, KeyError, OverflowError, MemoryError) as exc:
            raise MalformedPayloadError(f"{writer.name}: body is not valid Avro: {exc!r}") from exc
        if body.tell() != len(data) - HEADER_LEN:
            raise MalformedPayloadError(f"{writer.name}: {len(data) - HEADER_LEN - body.tell()} trailing bytes")
        if not isinstance(record, dict):
            raise MalformedPayloadError(f"{writer.name}: decoded to {type(record).__name__}, not a record")
        return Decoded(writer.name, writer.version, record)
