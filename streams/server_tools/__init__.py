"""Built-in server-side tools: each a module with its JSON Schema and handler, all run through
`base.run_tool` (arguments checked, time-limited, failures returned to the model as error results)."""

from __future__ import annotations

from streams.server_tools import calculator, fetch_url, metrics_query, search_knowledge
from streams.server_tools.base import Tool, ToolContext, ToolError, ToolOutcome, run_tool

TOOLS: dict[str, Tool] = {t.name: t for t in (search_knowledge.TOOL, calculator.TOOL, metrics_query.TOOL,
                                               fetch_url.TOOL)}

__all__ = ["TOOLS", "Tool", "ToolContext", "ToolError", "ToolOutcome", "run_tool"]
