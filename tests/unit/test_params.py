"""Every chat request field works or is refused with a 400 naming it (edge/params.py), stop sequences, and the
README's field table."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from conflux.config import REPO_ROOT
from edge import params
from edge.errors import ApiError
from edge.protocol import ChatCompletionRequest
from streams.stop_sequences import StopScanner

MSG = [{"role": "user", "content": "hi"}]


def req(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest(model="echo", messages=fields.pop("messages", MSG), **fields)


def refused(**fields: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        params.refuse_unsupported(req(**fields))
    assert info.value.status == 400 and info.value.code == "unsupported_parameter"
    return info.value


def test_every_field_of_the_openai_reference_has_a_rule() -> None:
    declared = set(ChatCompletionRequest.model_fields)
    assert declared == set(params.FIELDS), declared ^ set(params.FIELDS)


def test_values_that_ask_for_nothing_special_pass() -> None:
    params.refuse_unsupported(req(n=1, store=False, logprobs=False, service_tier="auto", modalities=["text"],
                                  response_format={"type": "text"}, tools=[], tool_choice="none",
                                  parallel_tool_calls=True, logit_bias={}, verbosity="medium",
                                  stop=["a", "b"], seed=-3, top_p=0.5, metadata={"k": "v"}))


@pytest.mark.parametrize(("field", "value"), [
    ("n", params.MAX_N + 1), ("store", True), ("service_tier", "flex"),
    ("modalities", ["text", "audio"]), ("response_format", {"type": "json_xml"}),
    ("response_format", {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}),
    ("tools", [{"type": "function", "function": {"name": "bad name"}}]),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
                                                                            "patternProperties": {}}}}]),
    ("tools", [{"type": "code_interpreter"}]),
    ("functions", [{"name": "f"}]), ("logit_bias", {"50256": -100}), ("prediction", {"type": "content"}),
    ("audio", {"voice": "alloy"}), ("reasoning_effort", "low"), ("web_search_options", {}),
    ("prompt_cache_key", "k"), ("stop", ["a", "b", "c", "d", "e"]), ("stop", [""]),
])
def test_values_the_platform_does_not_honour_are_refused_by_name(field: str, value: Any) -> None:
    err = refused(**{field: value})
    assert err.param == field and err.message.startswith(f"{field}: ")


def test_n_and_logprobs_are_taken_and_top_logprobs_needs_logprobs() -> None:
    asked = req(n=params.MAX_N, logprobs=True, top_logprobs=5)
    params.refuse_unsupported(asked)
    assert params.logprobs_asked(asked) == 5
    assert params.logprobs_asked(req(logprobs=True)) == 0
    assert params.logprobs_asked(req(logprobs=False)) is None
    with pytest.raises(ApiError) as info:
        params.refuse_unsupported(req(top_logprobs=3))
    assert info.value.status == 400 and info.value.param == "top_logprobs"


def test_messages_with_parts_the_platform_cannot_read_are_refused() -> None:
    image = [{"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {}}]}]
    assert refused(messages=image).param == "messages[0].content"


def test_tool_choice_must_name_a_tool_and_calls_in_messages_must_be_well_formed() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    named = {"type": "function", "function": {"name": "f"}}
    params.refuse_unsupported(req(tools=tools, tool_choice=named))
    with pytest.raises(ApiError, match="no tool named"):
        params.refuse_unsupported(req(tools=tools, tool_choice={"type": "function", "function": {"name": "g"}}))
    with pytest.raises(ApiError, match="required needs tools"):
        params.refuse_unsupported(req(tool_choice="required"))
    bad_call = [*MSG, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                                                          "function": {"name": "f", "arguments": "{oops"}}]}]
    with pytest.raises(ApiError, match="tool_calls"):
        params.refuse_unsupported(req(messages=bad_call))
    with pytest.raises(ApiError, match="tool_call_id"):
        params.refuse_unsupported(req(messages=[*MSG, {"role": "tool", "content": "42"}]))
    assert params.needs_grammar(req(tools=tools)) == "tools"
    assert params.needs_grammar(req(tools=tools, tool_choice="none")) is None
    assert params.needs_grammar(req(response_format={"type": "json_object"})) == "response_format"


def test_a_field_openai_does_not_have_is_rejected() -> None:
    with pytest.raises(ValidationError, match=r"extra_forbidden|Extra inputs"):
        req(tempurature=0.2)


def test_readme_field_table_matches_the_rules() -> None:
    assert params.table() in (REPO_ROOT / "README.md").read_text(), "regenerate: python -m edge.params"


def feed_all(stops: list[str], pieces: list[str]) -> tuple[str, bool]:
    s = StopScanner(stops)
    out = "".join(s.feed(p) for p in pieces)
    return (out if s.stopped else out + s.flush()), s.stopped


@pytest.mark.parametrize(("stops", "pieces", "want"), [
    (["."], ["Hello", " world", ". More"], ("Hello world", True)),
    (["END"], ["ab", "cE", "N", "Dxyz"], ("abc", True)),  # split across three pieces
    (["END"], ["ab", "cE", "N", "x"], ("abcENx", False)),  # a near miss is released whole
    (["\n\n", "!"], ["a\n", "b!c"], ("a\nb", True)),  # the earliest of several
    ([], ["a", "b"], ("ab", False)),
    (["xyz"], ["abx", "y"], ("abxy", False)),  # held back, then flushed at the end
])
def test_stop_sequences(stops: list[str], pieces: list[str], want: tuple[str, bool]) -> None:
    assert feed_all(stops, pieces) == want


def test_a_held_back_prefix_never_leaves_early() -> None:
    s = StopScanner(["STOP"])
    assert s.feed("go ST") == "go "
    assert s.feed("OP") == "" and s.stopped


def test_a_chain_refusal_keeps_its_status_and_a_failure_is_the_platforms() -> None:
    from edge.chat import chain_error

    too_long = chain_error({"finish_reason": "context_length_exceeded", "error": "2,300 tokens; 2,048 fit"})
    assert (too_long.status, too_long.code, too_long.type) == (400, "context_length_exceeded", "invalid_request_error")
    failed = chain_error({"finish_reason": "error", "error": "the model server failed"})
    assert (failed.status, failed.code) == (502, "generation_failed")


DEFAULTS = ("calculator", "search_knowledge")
HI: Any = [{"role": "user", "content": "hi"}]


def _with_defaults(can_guide: bool = True, **fields: Any) -> ChatCompletionRequest:
    return params.with_tenant_tools(ChatCompletionRequest(model="auto", messages=HI, **fields), DEFAULTS,
                                    lambda model: can_guide)


def test_a_tenants_default_tools_go_to_a_chat_that_names_none() -> None:
    assert _with_defaults().server_tools == list(DEFAULTS)
    assert _with_defaults(server_tools=["calculator"]).server_tools == ["calculator"]  # its own choice stands
    assert _with_defaults(server_tools=[]).server_tools == []  # an explicit opt-out
    plain = ChatCompletionRequest(model="auto", messages=HI)
    assert params.with_tenant_tools(plain, (), lambda model: True) is plain


@pytest.mark.parametrize("fields, can_guide", [
    ({"tool_choice": "none"}, True),
    ({"response_format": {"type": "json_object"}}, True),  # JSON together with tools is refused: no default
    ({}, False),  # a named model that cannot constrain its output
])
def test_a_default_never_turns_an_accepted_request_into_a_refused_one(fields: dict[str, Any], can_guide: bool) -> None:
    req = _with_defaults(can_guide, **fields)
    assert req.server_tools is None
    params.refuse_unsupported(req)


def test_tool_choice_required_is_valid_with_the_tenants_default_tools() -> None:
    params.refuse_unsupported(_with_defaults(tool_choice="required"))
    with pytest.raises(ApiError, match="required needs tools"):  # without a default, as before
        params.refuse_unsupported(ChatCompletionRequest(model="auto", messages=HI, tool_choice="required"))
