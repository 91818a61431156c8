"""Loads the event contracts in schemas/ and their frozen history, indexed by Avro fingerprint.

Layout: schemas/types/*.avsc are shared named types (Envelope, ChatMessage); schemas/<event>.avsc is one
event each; schemas/history/<event>/v<N>.avsc are self-contained (expanded) snapshots of every version
ever released. Old snapshots stay forever so bytes written by any past version still decode.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro.schema import (
    SchemaParseException,
    UnknownType,
    fingerprint,
    parse_schema,
    to_parsing_canonical_form,
)

from conflux.compat import incompatibilities
from conflux.config import REPO_ROOT
from conflux.errors import SchemaError

SCHEMAS_DIR = REPO_ROOT / "schemas"
# Shared named types, parsed in this order before any event schema.
TYPE_FILES = ("envelope.avsc", "chat_message.avsc")


@dataclass(frozen=True)
class EventSchema:
    """One version of one event's schema."""

    name: str  # file stem, e.g. "prompt_submitted"
    fullname: str  # Avro full name, e.g. "io.conflux.PromptSubmitted"
    version: int  # 0 when the current file differs from every snapshot (not yet frozen)
    parsed: dict[str, Any]  # fastavro-parsed, fully expanded
    canonical: str  # Parsing Canonical Form
    fingerprint: bytes  # CRC-64-AVRO of the canonical form, little-endian, as single-object encoding wants

    @property
    def expanded_json(self) -> str:
        """Self-contained schema text, defaults and docs kept (the canonical form drops them)."""
        return json.dumps(_clean(self.parsed), indent=2) + "\n"


def _clean(node: Any) -> Any:
    """Drops fastavro's private bookkeeping keys from a parsed schema."""
    if isinstance(node, dict):
        return {k: _clean(v) for k, v in node.items() if not k.startswith("__")}
    if isinstance(node, list):
        return [_clean(v) for v in node]
    return node


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SchemaError(f"cannot read schema {path}: {exc}") from exc


def _build(name: str, raw: Any, version: int, named: dict[str, Any] | None) -> EventSchema:
    try:
        parsed = parse_schema(raw, named_schemas=dict(named or {}), expand=True)
        canonical = to_parsing_canonical_form(parsed)
    except (SchemaParseException, UnknownType, ValueError, TypeError, KeyError) as exc:
        raise SchemaError(f"invalid schema for {name}: {exc}") from exc
    # fastavro's hex string is already the little-endian byte sequence the wire format wants.
    if not isinstance(parsed, dict) or parsed.get("type") != "record":
        raise SchemaError(f"{name}: an event schema must be a record")
    fp = bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO"))
    return EventSchema(name, parsed["name"], version, parsed, canonical, fp)


class SchemaRegistry:
    """All current event schemas plus every historical version, by name and by fingerprint."""

    def __init__(self, root: Path = SCHEMAS_DIR) -> None:
        self.root = root
        named: dict[str, Any] = {}
        for fname in TYPE_FILES:
            try:
                parse_schema(_read_json(root / "types" / fname), named_schemas=named)
            except (SchemaParseException, UnknownType) as exc:
                raise SchemaError(f"invalid shared type {fname}: {exc}") from exc
        self.history: dict[str, list[EventSchema]] = {}
        self.current: dict[str, EventSchema] = {}
        self._by_fp: dict[bytes, EventSchema] = {}
        for path in sorted(root.glob("*.avsc")):
            name = path.stem
            snaps = self._load_history(name)
            draft = _build(name, _read_json(path), 0, named)
            same = [s for s in snaps if s.canonical == draft.canonical]
            cur = same[-1] if same else draft
            self.current[name] = cur
            self.history[name] = snaps
            for s in [*snaps, cur]:
                self._by_fp[s.fingerprint] = s

    def _load_history(self, name: str) -> list[EventSchema]:
        hdir = self.root / "history" / name
        snaps: list[EventSchema] = []
        if not hdir.is_dir():
            return snaps
        for p in hdir.glob("v*.avsc"):
            try:
                version = int(p.stem[1:])
            except ValueError as exc:
                raise SchemaError(f"history file must be named v<N>.avsc: {p}") from exc
            snaps.append(_build(name, _read_json(p), version, None))
        return sorted(snaps, key=lambda s: s.version)

    def get(self, name: str) -> EventSchema:
        try:
            return self.current[name]
        except KeyError:
            raise SchemaError(f"unknown event {name!r}; known: {', '.join(sorted(self.current))}") from None

    def by_fingerprint(self, fp: bytes) -> EventSchema | None:
        return self._by_fp.get(fp)

    def check_evolution(self, name: str) -> list[str]:
        """Problems that make the current schema, or any step of its history, not full-compatible."""
        chain = [*self.history[name]]
        cur = self.current[name]
        if cur.version == 0:
            chain.append(cur)
        problems: list[str] = []
        for old, new in itertools.pairwise(chain):
            label = f"{name} v{old.version} -> {'current' if new.version == 0 else f'v{new.version}'}"
            problems += [f"{label} backward: {p}" for p in incompatibilities(new.parsed, old.parsed)]
            problems += [f"{label} forward: {p}" for p in incompatibilities(old.parsed, new.parsed)]
        return problems

    def snapshot(self) -> list[str]:
        """Freeze every changed schema as history/<event>/v<N+1>.avsc, refusing incompatible ones."""
        written: list[str] = []
        for name, cur in sorted(self.current.items()):
            if cur.version != 0:
                continue
            problems = self.check_evolution(name)
            if problems:
                raise SchemaError("incompatible schema change:\n  " + "\n  ".join(problems))
            version = (self.history[name][-1].version if self.history[name] else 0) + 1
            out = self.root / "history" / name / f"v{version}.avsc"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(cur.expanded_json)
            written.append(str(out.relative_to(self.root.parent)))
        return written
