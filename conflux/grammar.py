"""Constrained decoding on the platform side: which JSON Schemas are accepted, and the check of what the grammar
cannot hold.

`check_schema` refuses keywords outside the subset before any work, and asks llama.cpp whether the grammar made
from the schema (model_runtime.gbnf, the same conversion the models run) parses. What no grammar expresses
(bounds of non-integer numbers, multipleOf, some formats) is checked on the finished output by `validate`; the
inference stage then generates again, within a bound.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from conflux.errors import ConfluxError
from model_runtime.gbnf import BOUNDS, parse_error, to_gbnf

# OpenAI's strict mode keywords; annotations are accepted and ignored, as they ask for nothing.
STRUCTURE = {"type", "properties", "required", "additionalProperties", "items", "enum", "const", "anyOf",
             "$ref", "$defs", "definitions", "pattern", "format", "minItems", "maxItems", "minLength",
             "maxLength", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "prefixItems"}
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "strict", "nullable"}
TYPES = {"object", "array", "string", "number", "integer", "boolean", "null"}
FORMATS = {"date-time", "date", "time", "uuid", "email", "hostname", "ipv4", "ipv6", "duration", "uri"}
MAX_SCHEMA_BYTES = 64 * 1024
MAX_DEPTH = 10  # OpenAI's nesting limit


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

    from model_runtime.gguf_files import gguf_path

    return Llama(str(gguf_path("smollm2")), vocab_only=True, verbose=False)._model


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
