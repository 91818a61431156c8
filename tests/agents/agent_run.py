"""The OpenAI Agents SDK, wired as its users wire it, against the edge: an agent with one function tool runs to
completion over the Responses API (tracing to OpenAI off: there is no internet). Run in its own venv by
tests/integration/test_agents_sdk.py (its pins stay out of the project's); prints one JSON line."""

from __future__ import annotations

import asyncio
import json
import os

from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

calls: list[str] = []


@function_tool
def get_weather(city: str) -> str:
    """Current weather in a city."""
    calls.append(city)
    return f"Sunny and 21 degrees in {city}."


async def main() -> None:
    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=os.environ["CONFLUX_BASE"], api_key=os.environ["CONFLUX_KEY"])
    # The first turn must call the tool (a 135M model rarely chooses to); the SDK then resets tool_choice, so
    # the second turn answers from the tool's result. Greedy: sampled at temperature 1, the small model now and
    # then rambled past max_tokens, and the SDK raises on an incomplete response (a flaky test, not a defect).
    agent = Agent(name="weather", instructions="Use the tool to answer questions about the weather.",
                  tools=[get_weather], model=OpenAIResponsesModel("smollm2-135m-instruct", client),
                  model_settings=ModelSettings(tool_choice="get_weather", max_tokens=200, temperature=0))
    result = await Runner.run(agent, "What is the weather in Oslo?", max_turns=3)
    print(json.dumps({"tool_calls": calls, "final_output": str(result.final_output)[:200]}))


asyncio.run(main())
