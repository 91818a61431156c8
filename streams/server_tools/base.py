"""What every server-side tool shares: its declaration (name, JSON Schema, handler) and the one way it runs.

`run_tool` never raises. Arguments that do not match the schema, a tool that fails, and a tool that runs past its
time limit all come back as an error result the model reads (and that the tool.results event records); the
agent that called it goes on. The tenant is part of the context, never an argument: a model cannot name another
tenant's data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from conflux.errors import ConfluxError

log = logging.getLogger("conflux.tools")
DEFAULT_TIMEOUT_S = 10.0
MAX_RESULT_CHARS = 8000  # what goes back into the prompt; a longer result is cut and says so


class ToolError(ConfluxError):
    """What the model did wrong or what the tool could not do, in words the model can act on."""


@dataclass(frozen=True)
class ToolContext:
    """Per call: whose data, and the engines a tool may use (None where a deployment has none)."""

    tenant_id: str
    vectors: Any = None  # conflux.vectorstore store
    collection: str = "documents"
    embed: Callable[[str], Awaitable[list[float]]] | None = None
    clickhouse: Callable[[], Any] | None = None  # gives the clickhouse-connect client (connected on first use)
    fetch_allow: tuple[str, ...] = ()  # the tenant's allow-list of hosts for fetch_url
    fetch: Any = None  # fetch_url.FetchPolicy; None: the default policy


Handler = Callable[[ToolContext, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]  # JSON Schema of the arguments (OpenAI's strict subset)
    handler: Handler
    timeout_s: float = DEFAULT_TIMEOUT_S

    def openai(self) -> dict[str, Any]:
        """As an OpenAI `tools` entry, for the model's prompt and grammar."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass(frozen=True)
class ToolOutcome:
    ok: bool
    content: str  # the result as the model reads it (JSON text), or the error
    latency_ms: float
    error_kind: str | None = None  # bad_arguments | failed | timeout | internal
    meta: dict[str, Any] = field(default_factory=dict)


def _arguments(tool: Tool, raw: str | dict[str, Any]) -> dict[str, Any]:
    import jsonschema

    try:
        args = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as exc:
        raise ToolError(f"arguments are not JSON: {exc}") from None
    if not isinstance(args, dict):
        raise ToolError("arguments must be a JSON object")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(tool.parameters).iter_errors(args))
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "arguments"
        raise ToolError(f"{where}: {error.message}")
    return args


async def run_tool(tool: Tool, ctx: ToolContext, raw_args: str | dict[str, Any]) -> ToolOutcome:
    t0 = time.perf_counter()

    def outcome(ok: bool, content: str, kind: str | None = None) -> ToolOutcome:
        if len(content) > MAX_RESULT_CHARS:
            content = content[:MAX_RESULT_CHARS] + f"... [cut at {MAX_RESULT_CHARS} characters]"
        return ToolOutcome(ok, content, (time.perf_counter() - t0) * 1000, kind)

    try:
        args = _arguments(tool, raw_args)
    except ToolError as exc:
        return outcome(False, f"{tool.name}: bad arguments: {exc}", "bad_arguments")
    try:
        result = await asyncio.wait_for(tool.handler(ctx, args), tool.timeout_s)
    except ToolError as exc:
        return outcome(False, f"{tool.name}: {exc}", "failed")
    except TimeoutError:
        return outcome(False, f"{tool.name}: no result within {tool.timeout_s:g} s", "timeout")
    except Exception:
        log.exception("tool %s failed for tenant %s", tool.name, ctx.tenant_id)
        return outcome(False, f"{tool.name}: internal error", "internal")
    return outcome(True, json.dumps(result, ensure_ascii=False, default=str))
