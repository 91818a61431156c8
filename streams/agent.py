"""The agent loop's step: run the built-in tools the model called, record them, show the caller, and hand the
model their results.

inference._with_agent drives the loop (generate, run the calls, generate again, at most MAX_STEPS times, the
last time without the built-in tools so that the model answers). This module is one step of it:

- the calls run side by side, each through server_tools.run_tool (arguments checked, time-limited, a failure
  returned to the model as an error result, never raised);
- a result carrying an injection attempt is withheld from the model (a TOOL safety verdict says why);
- each result is a tool.results event (server=true), beside the tool.calls event the generation recorded;
- the caller sees the step as one chunk whose `tool_step` the edge streams as an SSE comment line
  (`: conflux.tool_step {...}`), which OpenAI clients skip, never as tool-call deltas (a client would try to
  run the tools itself);
- the results join the conversation as `tool` turns, cut to fit the model's window.

A worker that dies during the loop leaves a request whose caller has seen a step: its replay ends it with an
explicit error (streams/inference.generate), as for any answer interrupted after its first chunk.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from conflux.safety import check_rules
from streams.deps import Deps
from streams.prompt_build import Built
from streams.request import RequestContext
from streams.server_tools import TOOLS, ToolContext, ToolOutcome, run_tool
from streams.tools import Call, result_text, said_calls

if TYPE_CHECKING:  # inference imports this module
    from streams.inference import Generated

MAX_STEPS = 3  # rounds of built-in tool calls before the model must answer
SHOWN_CHARS = 2000  # of each result, in the step the caller sees (the event has it whole)
TURN_OVERHEAD = 6  # tokens a chat turn costs beyond its content (role, separators)


def context(deps: Deps, rc: RequestContext) -> ToolContext:
    """What the tools may use for this request: the tenant's own data only."""

    async def embed(text: str) -> list[float]:
        return [float(x) for x in (await deps.triton.embed([text]))[0]]

    return ToolContext(tenant_id=rc.env["tenant_id"], vectors=deps.vectors, collection=deps.collection, embed=embed,
                       clickhouse=lambda: deps.clickhouse, fetch_allow=rc.fetch_allow)


async def run_step(deps: Deps, rc: RequestContext, built: Built, generated: Generated, epoch: int, step: int,
                   window: int) -> tuple[Built, int]:
    """Runs `generated.server_calls`; returns the prompt with their results and the next chunk's sequence."""
    calls: list[Call] = generated.server_calls
    ctx = context(deps, rc)
    outcomes = list(await asyncio.gather(*(run_tool(TOOLS[c.name], ctx, c.arguments) for c in calls)))
    for c, out in zip(calls, outcomes, strict=True):  # as the tool returned it (the audit trail)
        await rc.events.add("tool.results", {
            "envelope": deps.envelope(rc.env), "call_id": c.id, "content": out.content, "server": True,
            "name": c.name, "ok": out.ok, "error_kind": out.error_kind, "latency_ms": out.latency_ms}, key=rc.key)
    outcomes = [await _screened(deps, rc, c, out) for c, out in zip(calls, outcomes, strict=True)]
    seq = await _show(deps, rc, generated.chunks_sent, epoch, step, calls, outcomes)
    count = deps.tokenizer(generated.model).count
    messages = _turns(count, built, calls, outcomes, window)
    tokens = sum(count(m["content"]) + TURN_OVERHEAD for m in messages[len(built.messages):])
    return replace(built, messages=messages, prompt_tokens=built.prompt_tokens + tokens), seq


WITHHELD = "[withheld: the result carried what looks like instructions to the model (prompt injection)]"


async def _screened(deps: Deps, rc: RequestContext, call: Call, out: ToolOutcome) -> ToolOutcome:
    """A tool's result is data, never instructions: one carrying an injection attempt (a fetched page, most
    likely) is withheld from the model, and a TOOL verdict records which call and why."""
    t0 = time.perf_counter()
    rules = check_rules(out.content)
    if not out.ok or not rules.attack:
        return out
    await rc.events.add("safety.verdicts", {
        "envelope": deps.envelope(rc.env), "stage": "TOOL", "verdict": "FLAG", "categories": ["prompt_injection"],
        "reasons": [f"{call.name} {call.id}: {', '.join(rules.reasons)}"], "score": None, "checker": "rules",
        "latency_ms": (time.perf_counter() - t0) * 1000}, key=rc.key)
    return replace(out, content=WITHHELD)


def step_record(step: int, calls: list[Call], outcomes: list[ToolOutcome]) -> dict[str, Any]:
    """What the caller sees of a step (the SSE comment line's JSON)."""
    return {"step": step, "calls": [
        {"id": c.id, "name": c.name, "arguments": c.arguments, "ok": out.ok,
         "result": out.content[:SHOWN_CHARS], "latency_ms": round(out.latency_ms, 1)}
        for c, out in zip(calls, outcomes, strict=True)]}


async def _show(deps: Deps, rc: RequestContext, seq: int, epoch: int, step: int, calls: list[Call],
                outcomes: list[ToolOutcome]) -> int:
    chunk: dict[str, Any] = {"envelope": deps.envelope(rc.env), "sequence": seq, "text": "", "is_final": False,
             "finish_reason": None, "error": None, "model": None, "prompt_tokens": None, "completion_tokens": None,
             "epoch": epoch, "tool_calls": [], "logprobs": [],
             "tool_step": json.dumps(step_record(step, calls, outcomes))}
    await deps.stream_chunk(rc.request, chunk, rc.events, to_tokens=False)  # the step is on tool_call_made already
    return seq + 1


def _turns(count: Callable[[str], int], built: Built, calls: list[Call], outcomes: list[ToolOutcome],
           window: int) -> list[dict[str, Any]]:
    """The conversation with the model's calls and their results appended, each result cut (evenly) so that
    the prompt fits `window` tokens."""
    said_text = said_calls([(c.name, c.arguments) for c in calls])
    said = {"role": "assistant", "name": None, "content": said_text}
    room = window - built.prompt_tokens - count(said_text) - TURN_OVERHEAD * (len(calls) + 1)
    share = max(room // max(len(calls), 1), 0)
    results = [{"role": "tool", "name": None,
                "content": fit(count, result_text(c.id, out.content), share)}
               for c, out in zip(calls, outcomes, strict=True)]
    return [*built.messages, said, *results]


CUT = " [cut to fit the model's context]"


def fit(count: Any, text: str, limit: int) -> str:
    """`text`, or its longest beginning that fits `limit` tokens with a note that it was cut ("" if none does)."""
    if count(text) <= limit:
        return text
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(text[:mid] + CUT) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo] + CUT if lo else ""
