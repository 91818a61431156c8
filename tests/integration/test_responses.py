"""/v1/responses with the official openai client: text and function tools, streamed and not, stored responses
continued by previous_response_id, GET and DELETE scoped to the tenant, refusals by name."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest

from conflux.config import Settings
from tests.integration.helpers import new_tenant_key_sync

MODEL = "smollm2-135m-instruct"
CITY: dict[str, Any] = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                        "additionalProperties": False}
TOOLS: Any = [{"type": "function", "name": "get_weather", "description": "Current weather in a city",
               "parameters": CITY}]


def client_for(stack: Settings) -> openai.OpenAI:
    _, key = new_tenant_key_sync(stack, "pro")
    return openai.OpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", api_key=key, timeout=120)


@pytest.fixture(scope="module")
def client(stack: Settings) -> openai.OpenAI:
    return client_for(stack)


def test_stored_responses_continue_and_are_the_tenant_s_own(stack: Settings, client: openai.OpenAI) -> None:
    first = client.responses.create(model="echo", input="one two three", max_output_tokens=6)
    assert first.output_text == "one two three one two three"
    assert first.status == "incomplete" and first.incomplete_details is not None  # echo fills max_output_tokens
    # The echo model repeats the newest user turn; the earlier one reaches the prompt through the stored history.
    second = client.responses.create(model="echo", input="again", previous_response_id=first.id,
                                     instructions="be brief", max_output_tokens=2)
    assert second.output_text == "again again" and second.previous_response_id == first.id
    assert client.responses.retrieve(first.id).output_text == first.output_text
    with pytest.raises(openai.NotFoundError):
        client_for(stack).responses.retrieve(first.id)  # another tenant
    with pytest.raises(openai.NotFoundError):
        client_for(stack).responses.create(model="echo", input="x", previous_response_id=first.id)
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    unstored = client.responses.create(model="echo", input="x", store=False, max_output_tokens=1)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_a_streamed_text_response(client: openai.OpenAI) -> None:
    deltas = []
    with client.responses.stream(model=MODEL, input="Say hi", max_output_tokens=400, temperature=0) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == "".join(deltas) and deltas


def test_a_streamed_function_call_and_its_output_next_turn(client: openai.OpenAI) -> None:
    stream = client.responses.create(model=MODEL, input="What is the weather in Oslo?", tools=TOOLS,
                                     tool_choice="required", parallel_tool_calls=False, stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    final: Any = events[-1]
    (call,) = final.response.output
    assert call.type == "function_call" and call.name == "get_weather"
    jsonschema.validate(json.loads(call.arguments), CITY)
    follow = client.responses.create(model=MODEL, previous_response_id=final.response.id, max_output_tokens=40,
                                     input=[{"type": "function_call_output", "call_id": call.call_id,
                                             "output": "Sunny, 21 degrees."}])
    assert follow.output_text and follow.output[0].type == "message"


def test_what_the_platform_cannot_honour_is_refused_by_name(client: openai.OpenAI) -> None:
    for kwargs, param in ((dict(reasoning={"effort": "high"}), "reasoning"),
                          (dict(tools=[{"type": "web_search"}]), "tools[0].type"),
                          (dict(extra_body={"frobnicate": 1}), "frobnicate"),
                          (dict(background=True), "background")):
        with pytest.raises(openai.BadRequestError) as info:
            client.responses.create(model="echo", input="x", **kwargs)  # type: ignore[call-overload]
        assert isinstance(info.value.body, dict) and info.value.body["param"] == param
