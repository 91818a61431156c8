"""Schema evolution: the resolution checker itself, and the repo's schemas against their history."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from conflux.compat import incompatibilities
from conflux.errors import SchemaError
from conflux.schemas import SCHEMAS_DIR, SchemaRegistry

REQUIRED_EVENTS = {
    "prompt_submitted", "safety_verdict", "retrieval_completed", "prompt_built", "routing_decision",
    "inference_requested", "token_chunk", "inference_completed", "response_delivered", "feedback_given",
    "document_ingested", "dead_letter",
}
ENVELOPE_FIELDS = {"event_id", "event_time", "tenant_id", "conversation_id", "request_id", "traceparent",
                   "schema_version"}


def rec(*fields: dict[str, Any], name: str = "R") -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": list(fields)}


def test_every_required_event_has_a_schema(registry: SchemaRegistry) -> None:
    assert set(registry.current) >= REQUIRED_EVENTS


@pytest.mark.parametrize("name", sorted(REQUIRED_EVENTS))
def test_every_event_starts_with_the_shared_envelope(registry: SchemaRegistry, name: str) -> None:
    first = registry.get(name).parsed["fields"][0]
    assert first["name"] == "envelope"
    assert first["type"]["name"] == "io.conflux.Envelope"
    assert {f["name"] for f in first["type"]["fields"]} >= ENVELOPE_FIELDS


@pytest.mark.parametrize("name", sorted(SchemaRegistry().current))
def test_current_schema_is_frozen_and_compatible_with_its_history(registry: SchemaRegistry, name: str) -> None:
    problems = registry.check_evolution(name)
    assert not problems, "\n".join(problems)
    assert registry.get(name).version >= 1, f"{name} changed: run `conflux schemas snapshot` and commit history/"


def test_adding_an_optional_field_is_full_compatible() -> None:
    old = rec({"name": "a", "type": "string"})
    new = rec({"name": "a", "type": "string"}, {"name": "b", "type": ["null", "int"], "default": None})
    assert incompatibilities(new, old) == [] and incompatibilities(old, new) == []


def test_adding_a_field_without_default_breaks_backward() -> None:
    old = rec({"name": "a", "type": "string"})
    new = rec({"name": "a", "type": "string"}, {"name": "b", "type": "int"})
    assert any("no default" in p for p in incompatibilities(new, old))


def test_removing_a_field_without_default_breaks_forward() -> None:
    old = rec({"name": "a", "type": "string"}, {"name": "b", "type": "int"})
    new = rec({"name": "a", "type": "string"})
    assert incompatibilities(new, old) == []
    assert any("$.b" in p for p in incompatibilities(old, new))


def test_type_changes_and_promotions() -> None:
    assert incompatibilities("long", "int") == []  # promotion: new long reads old int
    assert incompatibilities("int", "long")  # but not the reverse
    assert incompatibilities("int", "string")
    assert incompatibilities(["null", "string"], "string") == []
    assert incompatibilities("string", ["null", "string"])  # null has nowhere to go


def test_enum_symbols_need_a_reader_default() -> None:
    old = {"type": "enum", "name": "E", "symbols": ["A", "B"]}
    new = {"type": "enum", "name": "E", "symbols": ["A", "B", "C"]}
    assert incompatibilities(new, old) == []
    assert incompatibilities(old, new)  # old readers meet C
    assert incompatibilities({**old, "default": "A"}, new) == []


@pytest.fixture
def schema_copy(tmp_path: Path) -> Path:
    shutil.copytree(SCHEMAS_DIR, tmp_path / "schemas")
    return tmp_path / "schemas"


def _edit(path: Path, change: Any) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


def test_an_incompatible_change_in_the_repo_fails_the_check(schema_copy: Path) -> None:
    _edit(schema_copy / "token_chunk.avsc", lambda d: d["fields"].append({"name": "shard", "type": "int"}))
    reg = SchemaRegistry(schema_copy)
    assert reg.get("token_chunk").version == 0
    assert any("shard" in p and "backward" in p for p in reg.check_evolution("token_chunk"))
    with pytest.raises(SchemaError, match="incompatible"):
        reg.snapshot()


def test_a_compatible_change_is_frozen_as_the_next_version(schema_copy: Path) -> None:
    _edit(schema_copy / "token_chunk.avsc",
          lambda d: d["fields"].append({"name": "shard", "type": ["null", "int"], "default": None}))
    reg = SchemaRegistry(schema_copy)
    latest = reg.history["token_chunk"][-1].version
    assert reg.check_evolution("token_chunk") == []
    written = reg.snapshot()
    assert written == [f"schemas/history/token_chunk/v{latest + 1}.avsc"]
    again = SchemaRegistry(schema_copy)
    assert again.get("token_chunk").version == latest + 1
    # Bytes written with v1 still decode: v1's fingerprint stays known.
    assert again.by_fingerprint(again.history["token_chunk"][0].fingerprint) is not None


def test_an_envelope_change_is_checked_for_every_event(schema_copy: Path) -> None:
    _edit(schema_copy / "types" / "envelope.avsc",
          lambda d: next(f for f in d["fields"] if f["name"] == "tenant_id").update(type="int"))
    reg = SchemaRegistry(schema_copy)
    assert all(reg.check_evolution(n) for n in REQUIRED_EVENTS)
