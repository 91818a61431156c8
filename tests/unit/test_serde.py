"""Single-object encoding: round trips, interoperability with plain fastavro, and typed decode errors."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from fastavro import schemaless_reader
from fastavro.schema import fingerprint, parse_schema
from fastavro.utils import generate_many
from hypothesis import given, settings
from hypothesis import strategies as st

from conflux.errors import (
    DecodeError,
    EncodeError,
    MalformedPayloadError,
    NotSingleObjectError,
    UnknownSchemaError,
)
from conflux.schemas import SCHEMAS_DIR, SchemaRegistry
from conflux.serde import HEADER_LEN, MAGIC, AvroSerde, WrongEventError, new_envelope


def _token_chunk(text: str = "Hello") -> dict[str, Any]:
    return {
        "envelope": new_envelope(tenant_id="t1", conversation_id="c1", request_id="r1", producer="test"),
        "sequence": 0, "text": text, "is_final": False, "finish_reason": None, "error": None,
    }


def crc64_avro(data: bytes) -> int:
    """The Avro specification's reference algorithm, written out independently of fastavro."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for b in data:
        fp = (fp >> 8) ^ table[(fp ^ b) & 0xFF]
    return fp


def test_crc64_avro_matches_the_avro_reference_vector() -> None:
    # From Avro's share/test/data/schema-tests.txt: the fingerprint of "null" is 7195948357588979594.
    assert crc64_avro(b'"null"') == 7195948357588979594
    assert bytes.fromhex(fingerprint('"null"', "CRC-64-AVRO")) == (7195948357588979594).to_bytes(8, "little")


def test_header_is_marker_then_little_endian_fingerprint(serde: AvroSerde, registry: SchemaRegistry) -> None:
    data = serde.encode("token_chunk", _token_chunk())
    schema = registry.get("token_chunk")
    assert data[:2] == MAGIC
    assert data[2:HEADER_LEN] == crc64_avro(schema.canonical.encode()).to_bytes(8, "little")


@pytest.mark.parametrize("name", sorted(SchemaRegistry().current))
def test_every_event_round_trips_generated_records(name: str, serde: AvroSerde, registry: SchemaRegistry) -> None:
    schema = registry.get(name)
    for record in generate_many(schema.parsed, 25):
        decoded = serde.decode(serde.encode(name, record), expected=name)
        assert decoded.name == name
        assert decoded.record["envelope"]["event_id"] == record["envelope"]["event_id"]
        assert decoded.record["envelope"]["schema_version"] == schema.version


def test_stock_avro_library_decodes_with_only_the_schema_files(serde: AvroSerde) -> None:
    """What a downstream team in another language does: read .avsc files, skip the 10-byte header."""
    named: dict[str, Any] = {}
    for f in ("envelope.avsc", "chat_message.avsc"):
        parse_schema(json.loads((SCHEMAS_DIR / "types" / f).read_text()), named_schemas=named)
    schema = parse_schema(json.loads((SCHEMAS_DIR / "token_chunk.avsc").read_text()), named_schemas=named)
    data = serde.encode("token_chunk", _token_chunk("plain fastavro"))
    record = schemaless_reader(io.BytesIO(data[HEADER_LEN:]), schema)
    assert isinstance(record, dict)
    assert record["text"] == "plain fastavro"
    assert record["envelope"]["event_time"].tzinfo is not None


def test_encode_rejects_a_record_that_breaks_the_schema(serde: AvroSerde) -> None:
    bad = _token_chunk()
    bad["sequence"] = "not a number"
    with pytest.raises(EncodeError, match="sequence"):
        serde.encode("token_chunk", bad)
    with pytest.raises(EncodeError):
        serde.encode("token_chunk", {"text": "no envelope"})


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", NotSingleObjectError),
        (b"\xc3", NotSingleObjectError),
        (b'{"json": "not avro"}', NotSingleObjectError),
        (MAGIC + b"\x00" * 8 + b"\x02a", UnknownSchemaError),
    ],
)
def test_malformed_bytes_give_typed_errors(serde: AvroSerde, data: bytes, error: type[DecodeError]) -> None:
    with pytest.raises(error):
        serde.decode(data)


def test_truncated_and_padded_bodies_are_malformed(serde: AvroSerde) -> None:
    good = serde.encode("token_chunk", _token_chunk("a longer text to cut in half"))
    for cut in (HEADER_LEN, HEADER_LEN + 3, len(good) - 1):
        with pytest.raises(MalformedPayloadError):
            serde.decode(good[:cut])
    with pytest.raises(MalformedPayloadError, match="trailing"):
        serde.decode(good + b"\x00\x01")


def test_a_valid_event_on_the_wrong_topic_is_rejected(serde: AvroSerde) -> None:
    with pytest.raises(WrongEventError, match="expected a prompt_submitted"):
        serde.decode(serde.encode("token_chunk", _token_chunk()), expected="prompt_submitted")


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=200))
def test_random_bytes_after_a_real_header_never_crash(serde: AvroSerde, body: bytes) -> None:
    header = serde.encode("safety_verdict", {
        "envelope": new_envelope(tenant_id="t", conversation_id="c", request_id="r", producer="p"),
        "stage": "INPUT", "verdict": "BLOCK", "categories": [], "reasons": [], "score": None,
        "checker": "rules", "latency_ms": 1.0,
    })[:HEADER_LEN]
    with contextlib.suppress(DecodeError):  # the only acceptable failure
        serde.decode(header + body)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64))
def test_arbitrary_bytes_never_crash(serde: AvroSerde, data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        serde.decode(data)


def test_event_time_survives_with_microseconds(serde: AvroSerde) -> None:
    rec = _token_chunk()
    rec["envelope"]["event_time"] = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    out = serde.decode(serde.encode("token_chunk", rec)).record
    assert out["envelope"]["event_time"] == rec["envelope"]["event_time"]


def test_the_decoding_recipe_in_topics_md_works(serde: AvroSerde, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = (SCHEMAS_DIR.parent / "infra" / "TOPICS.md").read_text()
    snippet = doc.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(SCHEMAS_DIR.parent)
    namespace: dict[str, Any] = {}
    exec(compile(snippet, "TOPICS.md", "exec"), namespace)
    record = namespace["decode"](serde.encode("token_chunk", _token_chunk("from the docs")))
    assert record["text"] == "from the docs"
