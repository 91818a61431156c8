"""Avro schema resolution rules (specification, "Schema Resolution"), as a checker.

`incompatibilities(reader, writer)` lists why data written with `writer` could not be read with
`reader`. Backward compatibility of a change is (reader=new, writer=old); forward is the reverse.
Schemas are fastavro-parsed and expanded, so named types appear inline.
"""

from __future__ import annotations

from typing import Any

_PROMOTIONS = {
    "int": {"int", "long", "float", "double"},
    "long": {"long", "float", "double"},
    "float": {"float", "double"},
    "string": {"string", "bytes"},
    "bytes": {"bytes", "string"},
}


def _kind(schema: Any) -> str:
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        return str(schema["type"]) if not isinstance(schema["type"], dict | list) else _kind(schema["type"])
    return str(schema)


def _short(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _names_match(reader: dict[str, Any], writer: dict[str, Any]) -> bool:
    aliases = {_short(a) for a in reader.get("aliases", [])}
    return _short(reader["name"]) == _short(writer["name"]) or _short(writer["name"]) in aliases


def incompatibilities(reader: Any, writer: Any, path: str = "$") -> list[str]:
    """Reasons why `reader` cannot resolve data written with `writer` (empty list: compatible)."""
    if isinstance(reader, dict) and isinstance(reader.get("type"), dict | list):
        reader = reader["type"]
    if isinstance(writer, dict) and isinstance(writer.get("type"), dict | list):
        writer = writer["type"]
    rk, wk = _kind(reader), _kind(writer)

    if wk == "union":
        out: list[str] = []
        for i, branch in enumerate(writer):
            out += incompatibilities(reader, branch, f"{path}|{i}")
        return out
    if rk == "union":
        if any(not incompatibilities(branch, writer, path) for branch in reader):
            return []
        return [f"{path}: writer type {wk} matches no branch of the reader's union"]

    if wk in _PROMOTIONS or wk in ("null", "boolean", "double"):
        if rk == wk or rk in _PROMOTIONS.get(wk, set()):
            return []
        return [f"{path}: {wk} cannot be read as {rk}"]
    if rk != wk:
        return [f"{path}: {wk} cannot be read as {rk}"]

    if rk == "record":
        if not _names_match(reader, writer):
            return [f"{path}: record {writer['name']} cannot be read as {reader['name']}"]
        wfields = {f["name"]: f for f in writer["fields"]}
        problems: list[str] = []
        for f in reader["fields"]:
            names = [f["name"], *f.get("aliases", [])]
            match = next((wfields[n] for n in names if n in wfields), None)
            if match is None:
                if "default" not in f:
                    problems.append(f"{path}.{f['name']}: field missing from writer and has no default")
            else:
                problems += incompatibilities(f["type"], match["type"], f"{path}.{f['name']}")
        return problems
    if rk == "enum":
        if not _names_match(reader, writer):
            return [f"{path}: enum {writer['name']} cannot be read as {reader['name']}"]
        missing = [s for s in writer["symbols"] if s not in reader["symbols"]]
        if missing and "default" not in reader:
            return [f"{path}: enum symbols {missing} unknown to the reader, which has no default"]
        return []
    if rk == "array":
        return incompatibilities(reader["items"], writer["items"], f"{path}[]")
    if rk == "map":
        return incompatibilities(reader["values"], writer["values"], f"{path}{{}}")
    if rk == "fixed":
        if not _names_match(reader, writer) or reader["size"] != writer["size"]:
            return [f"{path}: fixed {writer['name']}({writer['size']}) vs {reader['name']}({reader['size']})"]
        return []
    return [f"{path}: unsupported schema kind {rk}"]
