"""metrics_query: the tenant's own platform metrics, by name. The model picks one of a fixed set of named,
read-only queries (consumers/metrics.py, the dashboard's) and a look-back window; it never writes SQL. The
tenant filter is the platform's (the query's own `tenant_id = {tenant}` parameter), and ClickHouse enforces a
time and a row limit on every query."""

from __future__ import annotations

import asyncio
from typing import Any

from consumers import metrics
from streams.server_tools.base import Tool, ToolContext, ToolError

QUERIES = {
    "event_counts": (metrics.event_counts, "events per type"),
    "requests_per_minute": (metrics.requests_per_minute, "requests, errors and blocks per minute"),
    "latency_by_model": (metrics.latency_by_model, "time to first token and duration quantiles, tokens/s and cost "
                                                   "per model"),
    "safety_by_category": (metrics.safety_by_category, "safety verdicts by stage, verdict and category"),
    "feedback_by_model": (metrics.feedback_by_model, "user feedback per model"),
    "cache_by_model": (metrics.cache_by_model, "response cache hits and misses per model"),
}
MAX_ROWS = 200
MAX_SECONDS = 5
MAX_MINUTES = 7 * 24 * 60


class _Limited:
    """The ClickHouse client with ClickHouse's own limits on every query: time, and rows read back."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        return self._client.query(sql, parameters=parameters, settings={
            "max_execution_time": MAX_SECONDS, "max_result_rows": MAX_ROWS, "result_overflow_mode": "break",
            "readonly": 2})


async def _run(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    if ctx.clickhouse is None:
        raise ToolError("no metrics store is configured for this deployment")
    query, _ = QUERIES[args["query"]]
    store = ctx.clickhouse

    def read() -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = query(_Limited(store()), ctx.tenant_id, int(args["minutes"]))
        return rows

    rows = await asyncio.to_thread(read)
    return {"query": args["query"], "minutes": args["minutes"], "rows": rows[:MAX_ROWS],
            "truncated": len(rows) > MAX_ROWS}


TOOL = Tool(
    name="metrics_query",
    description="Reads this tenant's platform metrics over the last `minutes`: "
                + "; ".join(f"{name}: {what}" for name, (_, what) in QUERIES.items()) + ".",
    parameters={"type": "object",
                "properties": {"query": {"type": "string", "enum": sorted(QUERIES)},
                               "minutes": {"type": "integer", "minimum": 1, "maximum": MAX_MINUTES}},
                "required": ["query", "minutes"], "additionalProperties": False},
    handler=_run, timeout_s=float(MAX_SECONDS + 2))
