"""JSON Schema (OpenAI's strict subset) as a llama.cpp grammar (GBNF), and llama.cpp's own verdict on a grammar.

`to_gbnf` extends llama-cpp-python's converter with integer bounds (the converter ignores minimum and maximum)
and a JSON string rule without raw control characters. The models convert a `json_schema` guide with it (as
TensorRT-LLM converts one with XGrammar); the platform uses it to check schemas before any work and to build
the tool-call grammar.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from model_runtime.errors import ModelRuntimeError

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


class GrammarError(ModelRuntimeError, ValueError):
    """A schema asks for something no grammar can hold (an empty integer range)."""


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
        raise GrammarError(f"no integer lies between {lo} and {hi}")
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
