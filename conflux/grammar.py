"""Constrained decoding: a JSON Schema (OpenAI's strict subset) as a llama.cpp grammar, and the check of what
the grammar cannot hold.

`check_schema` refuses keywords outside the subset before any work. `to_gbnf` turns a schema into GBNF with
llama-cpp-python's converter, extended here with integer bounds (the converter ignores minimum and maximum)
and a JSON string rule without raw control characters. What no grammar here expresses (bounds of non-integer
numbers, multipleOf, some formats) is checked on the finished output by `validate`; the inference stage then
generates again, within a bound.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from conflux.errors import ConfluxError

# OpenAI's strict mode keywords; annotations are accepted and ignored, as they ask for nothing.
STRUCTURE = {"type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf",
             "$ref", "$defs", "definitions", "pattern", "format", "minItems", "maxItems", "minLength",
             "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "prefixItems"}
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "strict", "nullable"}
TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
FORMATS = {"date-time", "date", "time", "uuid", "email", "hostname", "ipv4", "ipv6", "duration", "uri"}
MAX_SCHEMA_BYTES = 64 * 1024
MAX_DEPTH = 10  # OpenAI's nesting limit
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
# A JSON string character: no raw control characters, which JSON does not allow unescaped (the converter's own
# rule lets a model put a raw newline inside a string, and the result would not parse).
CHAR = r'[^"\\\x7F\x00-\x1F] | "\\" (["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F])'
DOT = r'[^"\\\x7F\x00-\x1F]'
WIDEST = 10**15 - 1  # integers without a bound on one side: up to 15 digits, like the converter's own rule
# Formats the converter has no rule for, as patterns it turns into grammar (the format itself is still checked
# on the output by `validate`). date, time, date-time and uuid have rules of their own.
_OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
FORMAT_PATTERNS = {
    "email": r"^[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63}){0,4}\.[A-Za-z]{2,24}$",
    "hostname": r"^[A-Za-z0-9-]{1,63}(\.[A-Za-z0-9-]{1,63}){0,10}$",
    "ipv4": rf"^({_OCTET}\.){{3}}{_OCTET}$",
    "ipv6": r"^([0-9a-f]{1,4}:){7}[0-9a-f]{1,4}$",  # the full form only: always valid, if not the shortest
    "uri": r"^[a-z][a-z0-9+.-]{0,15}://[A-Za-z0-9._~%!$&()*+,;=:@/?#-]{1,200}$",
    "duration": r"^P([0-9]{1,4}Y)?([0-9]{1,4}M)?([0-9]{1,4}W)?([0-9]{1,4}D)?"
                r"(T([0-9]{1,4}H)?([0-9]{1,4}M)?([0-9]{1,4}S)?)?$",
}


class SchemaError(ConfluxError):
    """A schema uses a keyword or a construct constrained decoding here cannot honour."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")
        self.where = where


def check_schema(schema: Any, where: str = "schema") -> None:
    """SchemaError naming the first place that asks for something outside the supported subset."""
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise SchemaError(where, f"larger than {MAX_SCHEMA_BYTES} bytes")
    _check(schema, where, 0)
    try:
        gbnf = to_gbnf(json.dumps(schema, sort_keys=True))
    except SchemaError:
        raise
    except (AssertionError, ValueError, KeyError, TypeError, RecursionError) as exc:  # what the converter raises
        raise SchemaError(where, f"cannot be turned into a grammar: {exc}") from None
    if why := parse_error(gbnf, _reference_vocab().vocab):
        raise SchemaError(where, why)


@lru_cache(maxsize=1)
def _reference_vocab() -> Any:
    """A vocabulary to parse grammars with (SmolLM2's, loaded without weights: 0.1 s, a few MB); the parse does
    not depend on which. The Llama object is kept so that its vocabulary stays alive."""
    from llama_cpp import Llama

    from conflux.llm import smollm2_gguf_path

    return Llama(str(smollm2_gguf_path()), vocab_only=True, verbose=False)._model


def _check(schema: Any, where: str, depth: int) -> None:
    if isinstance(schema, bool):
        raise SchemaError(where, "boolean schemas are not supported; give an object")
    if not isinstance(schema, dict):
        raise SchemaError(where, "a schema is a JSON object")
    if depth > MAX_DEPTH:
        raise SchemaError(where, f"nested deeper than {MAX_DEPTH} levels")
    unknown = sorted(set(schema) - STRUCTURE - ANNOTATIONS)
    if unknown:
        raise SchemaError(f"{where}.{unknown[0]}", "keyword not supported by constrained decoding here")
    kinds = schema.get("type")
    for kind in kinds if isinstance(kinds, list) else [kinds] if kinds is not None else []:
        if kind not in TYPES:
            raise SchemaError(f"{where}.type", f"unknown type {kind!r}")
    if "format" in schema and schema["format"] not in FORMATS:
        raise SchemaError(f"{where}.format", f"format {schema['format']!r} is not supported")
    extra = schema.get("additionalProperties")
    if extra not in (None, False):
        raise SchemaError(f"{where}.additionalProperties", "only false is supported (as in OpenAI's strict mode)")
    for key in ("properties", "$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            _check(sub, f"{where}.{key}.{name}", depth + 1)
    if isinstance(schema.get("items"), dict):
        _check(schema["items"], f"{where}.items", depth + 1)
    for key in ("anyOf", "prefixItems"):
        for i, sub in enumerate(schema.get(key) or []):
            _check(sub, f"{where}.{key}[{i}]", depth + 1)
    ref = schema.get("$ref")
    if ref is not None and not str(ref).startswith("#"):
        raise SchemaError(f"{where}.$ref", "only references inside the schema (#/...) are followed")


def _digits_range(lo: int, hi: int) -> list[tuple[int, int]]:
    """[lo, hi] (both >= 0) as blocks that are each one digit range over a shared prefix, followed by any digits:
    [5, 23] -> [5-9], 1[0-9], 2[0-3]."""
    blocks = [(0, 0)] if lo == 0 else []  # zero alone: every other block starts at a non-zero digit
    start = max(lo, 1)
    while start <= hi:
        step = 1
        while start % (step * 10) == 0 and start + step * 10 - 1 <= hi:
            step *= 10
        end = start + step - 1
        while end + step <= hi and (end + 1) % (step * 10) != 0:
            end += step
        blocks.append((start, end))
        start = end + 1
    return blocks


def _block(lo: int, hi: int) -> str:
    a, b = str(lo), str(hi)  # same length, by construction of the blocks
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    parts = [f'"{a[:i]}"'] if i else []
    if i < len(a):
        parts.append(f"[{a[i]}-{b[i]}]")
        parts += ["[0-9]"] * (len(a) - i - 1)
    return " ".join(parts)


def int_range(lo: int, hi: int) -> str:
    """GBNF for the decimal integers in [lo, hi], in JSON's spelling (no leading zeros, no "-0")."""
    if lo > hi:
        raise SchemaError("schema", f"no integer lies between {lo} and {hi}")
    alts = []
    if lo < 0:
        neg_hi, neg_lo = -lo, max(1, -hi)
        alts += [f'"-" {_block(a, b)}' for a, b in _digits_range(neg_lo, neg_hi)]
    if hi >= 0:
        alts += [_block(a, b) for a, b in _digits_range(max(0, lo), hi)]
    return " | ".join(f"({a})" for a in alts)


def _int_bounds(schema: dict[str, Any]) -> tuple[int, int]:
    import math

    lo, hi = -WIDEST, WIDEST
    if "minimum" in schema:
        lo = max(lo, math.ceil(schema["minimum"]))
    if "exclusiveMinimum" in schema:
        lo = max(lo, math.floor(schema["exclusiveMinimum"]) + 1)
    if "maximum" in schema:
        hi = min(hi, math.floor(schema["maximum"]))
    if "exclusiveMaximum" in schema:
        hi = min(hi, math.ceil(schema["exclusiveMaximum"]) - 1)
    return lo, hi


def _converter() -> Any:
    from llama_cpp.llama_grammar import RESERVED_NAMES, SchemaConverter

    class Converter(SchemaConverter):  # type: ignore[misc]
        def visit(self, schema: Any, name: str) -> Any:
            if isinstance(schema, dict) and schema.get("type") == "integer" and any(b in schema for b in BOUNDS):
                rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
                lo, hi = _int_bounds(schema)
                return self._add_rule(rule_name, f"({int_range(lo, hi)}) space")  # type: ignore[no-untyped-call]
            return super().visit(schema, name)  # type: ignore[no-untyped-call]

    return Converter(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)  # type: ignore[no-untyped-call]


@lru_cache(maxsize=256)
def to_gbnf(schema_json: str, root: str = "root") -> str:
    """The grammar of a schema (given as JSON text, so that it can be cached); `root` names its top rule, so
    that another grammar can embed it."""
    conv = _converter()
    schema = conv.resolve_refs(_anchor_patterns(json.loads(schema_json)), "schema")
    conv.visit(schema, "" if root == "root" else root)
    # Both rules stand for characters inside a JSON string (`dot` is a pattern's "."): keep them valid JSON.
    for rule, body in (("char", CHAR), ("dot", DOT)):
        if rule in conv._rules:
            conv._rules[rule] = body
    return _llama_escapes(str(conv.format_grammar()))


LLAMA_ESCAPES = set('xuUtrn\\"[]')  # what llama.cpp's grammar parser reads after a backslash


def _llama_escapes(gbnf: str) -> str:
    """The converter escapes characters llama.cpp's parser does not know as escapes (`\\.` from a pattern's
    escaped dot, `\\-` in a class): those become hex escapes, which it reads everywhere."""
    out, i = [], 0
    while i < len(gbnf):
        c = gbnf[i]
        if c == "\\" and i + 1 < len(gbnf):
            nxt = gbnf[i + 1]
            out.append(c + nxt if nxt in LLAMA_ESCAPES else f"\\x{ord(nxt):02X}")
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def parse_error(gbnf: str, vocab: Any) -> str | None:
    """Why llama.cpp cannot parse `gbnf` (None when it can), asked of llama.cpp itself with a model's vocabulary.
    llama-cpp-python hands an unparsable grammar on unchecked and the process then crashes, so every grammar is
    parsed here before it is used."""
    import llama_cpp

    sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
    if not sampler:
        return "llama.cpp cannot parse the grammar made from this schema"
    llama_cpp.llama_sampler_free(sampler)
    return None


def _anchor_patterns(schema: Any) -> Any:
    """The schema as the converter is to read it: formats without a rule of their own as patterns, and patterns
    anchored (JSON Schema's `pattern` matches anywhere in the string; the converter reads it as anchored)."""
    if isinstance(schema, list):
        return [_anchor_patterns(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _anchor_patterns(v) for k, v in schema.items()}
    if schema.get("format") in FORMAT_PATTERNS and "pattern" not in schema:
        out["pattern"] = FORMAT_PATTERNS[out.pop("format")]
    if isinstance(out.get("pattern"), str):
        p = out["pattern"]
        start, end = p.startswith("^"), p.endswith("$") and not p.endswith("\\$")
        core = p[1 if start else 0:len(p) - 1 if end else len(p)]
        out["pattern"] = ("^" if start else "^.*") + core + ("$" if end else ".*$")
    return out


def held_by_grammar(schema: Any) -> bool:
    """Whether the grammar of `schema` alone makes every output valid, so that the output may be streamed as it
    is generated instead of checked whole first. Not held: bounds of non-integers, multipleOf, formats (their
    finer rules, such as a real calendar date), and patterns (the converter's regular expressions are a subset,
    so it is not trusted to hold one exactly)."""
    if not isinstance(schema, dict):
        return True
    if "multipleOf" in schema or "format" in schema or "pattern" in schema:
        return False
    if any(b in schema for b in BOUNDS) and schema.get("type") != "integer":
        return False
    subs = [sub for key in ("properties", "$defs", "definitions") for sub in (schema.get(key) or {}).values()]
    subs += [sub for key in ("anyOf", "prefixItems") for sub in schema.get(key) or []]
    subs += [schema["items"]] if isinstance(schema.get("items"), dict) else []
    return all(held_by_grammar(sub) for sub in subs)


def validate(schema: dict[str, Any], text: str) -> str | None:
    """Why `text` is not a JSON value valid under `schema`, or None when it is."""
    import jsonschema

    try:
        value = json.loads(text)
    except ValueError as exc:
        return f"not JSON: {exc}"
    validator = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    return None if error is None else f"{'/'.join(map(str, error.absolute_path)) or 'value'}: {error.message}"
