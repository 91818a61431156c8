"""Constrained decoding: integer bounds as grammar, schema keywords checked, outputs validated; the tool plan
(what the model is told, the grammar it follows) and the parsing of its calls."""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest

from conflux import grammar
from model_runtime import gbnf
from streams import tools

WEATHER = {"type": "object", "properties": {"city": {"type": "string"},
                                           "days": {"type": "integer", "minimum": 1, "maximum": 7}},
           "required": ["city", "days"], "additionalProperties": False}
TOOLS = json.dumps([{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
                    {"type": "function", "function": {"name": "now"}}])


def as_regex(gbnf_alternatives: str) -> re.Pattern[str]:
    return re.compile(gbnf_alternatives.replace('"', "").replace(" ", ""))


@pytest.mark.parametrize(("lo", "hi"), [(0, 7), (5, 23), (-15, 7), (-30, -3), (1, 1000), (17, 17), (0, 0),
                                        (-5, 0), (0, 10**15 - 1)])
def test_integer_ranges_hold_exactly_the_integers_in_range(lo: int, hi: int) -> None:
    rx = as_regex(gbnf.int_range(lo, hi))
    rng = random.Random(lo * 31 + hi)
    for v in [lo, hi, lo - 1, hi + 1, 0, *(rng.randint(lo - 100, hi + 100) for _ in range(3000))]:
        assert bool(rx.fullmatch(str(v))) == (lo <= v <= hi), v
    for spelled in ("01", "-0", "00", "+1"):
        assert not rx.fullmatch(spelled)


def test_bounds_reach_the_grammar_and_strings_cannot_hold_raw_control_characters() -> None:
    g = gbnf.to_gbnf(json.dumps(WEATHER))
    assert "[1-7]" in g and "integral-part" not in g
    assert r"\x00-\x1F" in gbnf.to_gbnf(json.dumps({"type": "string"}))


def test_keywords_outside_the_strict_subset_are_refused_by_path() -> None:
    grammar.check_schema(WEATHER)
    for bad, where in [({"type": "object", "properties": {"a": {"not": {}}}}, "schema.properties.a.not"),
                       ({"type": "object", "additionalProperties": True}, "schema.additionalProperties"),
                       ({"type": "string", "format": "credit-card"}, "schema.format"),
                       ({"$ref": "https://example.com/s.json"}, "schema.$ref")]:
        with pytest.raises(grammar.SchemaError) as info:
            grammar.check_schema(bad)
        assert info.value.where == where


def test_validate_names_what_the_grammar_could_not_hold() -> None:
    price = {"type": "object", "properties": {"p": {"type": "number", "minimum": 0.5}}, "required": ["p"]}
    assert grammar.validate(price, '{"p": 0.7}') is None
    assert "p" in (grammar.validate(price, '{"p": 0.1}') or "")
    assert (grammar.validate(price, '{"p": ') or "").startswith("not JSON")


def test_auto_lets_the_model_answer_or_call_and_tells_them_apart() -> None:
    guide = tools.plan({"tools": TOOLS, "tool_choice": None, "parallel_tool_calls": True})
    assert guide is not None and guide.guide_type == "gbnf" and "get_weather" in guide.instructions
    assert 'root ::= "<tool_call>" calls | text' in guide.guide
    text = tools.check(guide, "It is sunny.")
    assert text.text == "It is sunny." and not text.calls and text.problem is None
    call = tools.check(guide, '<tool_call>[{"name": "get_weather", "arguments": {"city": "Oslo", "days": 3}}]')
    assert call.problem is None and [(c.name, json.loads(c.arguments)) for c in call.calls] == [
        ("get_weather", {"city": "Oslo", "days": 3})]
    out_of_range = tools.check(guide, '<tool_call>[{"name": "get_weather", "arguments": {"city": "O", "days": 9}}]')
    assert out_of_range.problem is not None


def test_a_named_choice_generates_the_arguments_alone() -> None:
    choice = json.dumps({"type": "function", "function": {"name": "get_weather"}})
    guide = tools.plan({"tools": TOOLS, "tool_choice": choice})
    assert guide is not None and guide.guide_type == "json_schema" and json.loads(guide.guide) == WEATHER
    out = tools.check(guide, '{ "city": "Oslo", "days": 2 }')
    assert out.calls[0].name == "get_weather" and out.calls[0].arguments == '{"city": "Oslo", "days": 2}'


def test_none_and_response_format() -> None:
    assert tools.plan({"tools": TOOLS, "tool_choice": '"none"'}) is None
    fmt = json.dumps({"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER}})
    guide = tools.plan({"response_format": fmt})
    assert guide is not None and guide.kind == "json" and guide.schema == WEATHER
    assert tools.check(guide, '{"city": "Oslo", "days": 8}').problem is not None


def test_deltas_stream_a_call_as_openai_does() -> None:
    call = tools.Call("call_1", "get_weather", json.dumps({"city": "x" * 100, "days": 1}))
    deltas = tools.deltas([call])
    assert deltas[0] == {"index": 0, "id": "call_1", "name": "get_weather", "arguments": ""}
    assert all(d["id"] is None for d in deltas[1:]) and len(deltas) > 2
    assert "".join(d["arguments"] for d in deltas) == call.arguments


def test_earlier_calls_and_results_are_rendered_for_the_model() -> None:
    calls = json.dumps([{"id": "c1", "type": "function", "function": {"name": "now", "arguments": "{}"}}])
    messages = [{"role": "user", "content": "time?"}, {"role": "assistant", "content": "", "tool_calls": calls},
                {"role": "tool", "content": "12:00", "tool_call_id": "c1"}]
    assert tools.render_message(messages[1]) == ("assistant", '<tool_call>[{"name": "now", "arguments": {}}]')
    assert tools.render_message(messages[2]) == ("tool", "[result of c1] 12:00")
    assert tools.new_results(messages) == [messages[2]]


def test_every_grammar_made_here_parses_in_llama_cpp() -> None:
    vocab = grammar._reference_vocab().vocab
    schemas = [{"type": "string", "format": f} for f in grammar.FORMATS] + [
        {"type": "string", "pattern": r"^a\.b-c[x\-y]$"}, WEATHER,
        tools.calls_schema(tools.functions_of({"tools": TOOLS}), True)]
    for schema in schemas:
        grammar.check_schema(schema)  # parses it in llama.cpp too
        assert gbnf.parse_error(gbnf.to_gbnf(json.dumps(schema)), vocab) is None, schema
    assert gbnf.parse_error('root ::= "\\."', vocab) is not None  # what would have crashed the model server


def test_a_prompt_that_cannot_fit_is_refused_instead_of_cut_forever() -> None:
    from streams.prompt_build import PromptTooLong, build_messages

    def count(text: str) -> int:
        return len(text) // 4

    with pytest.raises(PromptTooLong, match="tools and response format stay whole"):
        build_messages("x" * 8000, [], [], [{"role": "user", "content": "question " * 500}], 1000, count)
    msgs, truncated, _, _ = build_messages("short", [], [], [{"role": "user", "content": "q " * 5000}], 1000, count)
    assert truncated and msgs[-1].content.endswith("q ")


def test_only_schemas_the_grammar_holds_whole_are_streamed() -> None:
    held = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1, "maximum": 7},
                                             "format": {"type": "string", "enum": ["a", "b"]}},
            "required": ["n", "format"], "additionalProperties": False}
    assert grammar.held_by_grammar(held)  # a property may be named "format"
    for loose in ({"type": "number", "maximum": 2.5}, {"type": "integer", "multipleOf": 3},
                  {"type": "string", "format": "date"}, {"type": "string", "pattern": "^a+$"}):
        assert not grammar.held_by_grammar({"type": "object", "properties": {"x": {"type": "array", "items": loose}}})


FORECAST = {"type": "object", "properties": {"city": {"type": "string"}, "tags": {"type": "array",
                                                                                 "items": {"type": "string"}}},
           "required": ["city", "tags"], "additionalProperties": False}


def _two_tools(choice: Any = None) -> tools.Guide:
    guide = tools.plan({"tools": json.dumps([
        {"type": "function", "function": {"name": "weather", "parameters": FORECAST}},
        {"type": "function", "function": {"name": "time", "parameters": {"type": "object", "properties": {},
                                                                       "additionalProperties": False}}}]),
        "tool_choice": json.dumps(choice) if choice else None, "parallel_tool_calls": True})
    assert guide is not None and guide.streamed
    return guide


def _feed_in_random_pieces(stream: tools.CallStream, text: str, rng: random.Random) -> list[dict[str, Any]]:
    deltas, i = [], 0
    while i < len(text):
        k = rng.randint(1, 6)
        deltas += stream.feed(text[i:i + k])
        i += k
    return deltas


def test_calls_stream_as_they_are_generated_whatever_the_pieces() -> None:
    out = ('<tool_call>[{"name": "weather", "arguments": {"city": "Pa\\"ris {x}", "tags": ["a]", "b\\\\"]}}, '
           '{"name":"time","arguments":{}}]')
    rng = random.Random(3)
    for _ in range(100):
        stream = tools.CallStream(_two_tools())
        deltas = _feed_in_random_pieces(stream, out, rng)
        calls = stream.calls()
        assert not stream.text_mode and [c.name for c in calls] == ["weather", "time"]
        assert json.loads(calls[0].arguments) == {"city": 'Pa"ris {x}', "tags": ["a]", "b\\"]}
        assert json.loads(calls[1].arguments) == {}
        assert [d["index"] for d in deltas if d["id"]] == [0, 1]  # id and name first, once per call
        assembled: dict[int, str] = {}
        for d in deltas:
            assembled[d["index"]] = assembled.get(d["index"], "") + d["arguments"]
        assert [assembled[0], assembled[1]] == [c.arguments for c in calls]
        assert tools.check(_two_tools(), out).problem is None


def test_under_auto_text_is_told_from_a_call_by_its_first_character() -> None:
    text = tools.CallStream(_two_tools())
    assert text.feed("Hello") == [] and text.text_mode and text.take_text() == "Hello"
    undecided = tools.CallStream(_two_tools())
    assert undecided.feed("<tool") == [] and not undecided.text_mode


def test_a_named_choice_streams_its_arguments_from_the_first_character() -> None:
    stream = tools.CallStream(_two_tools({"type": "function", "function": {"name": "weather"}}))
    first = stream.feed(' {"city"')
    assert first[0]["name"] == "weather" and first[0]["id"] and first[1]["arguments"] == '{"city"'
    stream.feed(': "Oslo", "tags": []}')
    assert json.loads(stream.calls()[0].arguments) == {"city": "Oslo", "tags": []}
