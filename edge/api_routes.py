"""Metrics API (JSON) under /api and usage under /v1/usage, scoped to the caller's tenant, and Prometheus
metrics of this edge."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse

from conflux.budget import limits_for
from consumers import metrics
from consumers.usage import BUCKETS, GROUPS, usage_buckets
from edge.errors import ApiError
from edge.routes import _tenant

router = APIRouter()
Minutes = Query(default=60, ge=1, le=7 * 24 * 60, description="look-back window")


async def _run(request: Request, fn: Callable[..., Any], *args: Any) -> Any:
    # clickhouse-connect is synchronous: keep it off the event loop that streams answers.
    return await asyncio.to_thread(fn, request.app.state.clickhouse, *args)


@router.get("/api/events/counts")
async def event_counts(request: Request, minutes: int = Minutes,
                       authorization: str | None = Header(default=None)) -> dict[str, Any]:
    tenant = await _tenant(request, authorization)
    rows = await _run(request, metrics.event_counts, tenant.tenant_id, minutes)
    return {"tenant": tenant.tenant_id, "minutes": minutes, "counts": {r["event_type"]: r["rows"] for r in rows}}


_VIEWS: dict[str, Callable[..., Any]] = {
    "requests": metrics.requests_per_minute,
    "latency": metrics.latency_by_model,
    "safety": metrics.safety_by_category,
    "feedback": metrics.feedback_by_model,
    "hops": metrics.per_hop_latency,
    "cache": metrics.cache_by_model,
    "quality": metrics.quality_by_model_day,
}


@router.get("/api/metrics/{view}")
async def metric_view(view: str, request: Request, minutes: int = Minutes,
                      authorization: str | None = Header(default=None)) -> dict[str, Any]:
    tenant = await _tenant(request, authorization)
    if view not in _VIEWS:
        raise ApiError(404, f"unknown metric view {view!r}; known: {sorted(_VIEWS)}",
                       "not_found_error", code="unknown_view")
    return {"view": view, "minutes": minutes, "rows": await _run(request, _VIEWS[view], tenant.tenant_id, minutes)}


@router.get("/api/requests")
async def recent(request: Request, minutes: int = Minutes, limit: int = Query(default=50, ge=1, le=500),
                 authorization: str | None = Header(default=None)) -> dict[str, Any]:
    tenant = await _tenant(request, authorization)
    return {"rows": await _run(request, metrics.recent_requests, tenant.tenant_id, minutes, limit)}


@router.get("/api/requests/{request_id}/timeline")
async def request_timeline(request_id: str, request: Request,
                           authorization: str | None = Header(default=None)) -> dict[str, Any]:
    tenant = await _tenant(request, authorization)
    events = await _run(request, metrics.timeline, tenant.tenant_id, request_id)
    if not events:
        raise ApiError(404, f"request {request_id} not found", "not_found_error", code="not_found")
    return {"request_id": request_id, "events": events}


USAGE_PARAMS = {"start_time", "end_time", "bucket_width", "group_by"}
MAX_BUCKETS = {"1d": 31, "1h": 168}  # as OpenAI's usage API: a month of days, a week of hours


@router.get("/v1/usage")
async def usage(request: Request, authorization: str | None = Header(default=None)) -> dict[str, Any]:
    """Requests, tokens and cost of the caller's tenant per day (or hour), optionally per model and per API
    key (`group_by=model,api_key_id`), in OpenAI's bucket shape; with the budgets that apply to this key."""
    tenant = await _tenant(request, authorization)
    q = request.query_params
    if unknown := sorted(set(q) - USAGE_PARAMS):
        raise ApiError(400, f"Unrecognized query parameter: {unknown[0]}; known: {sorted(USAGE_PARAMS)}",
                       param=unknown[0], code="unsupported_parameter")
    bucket = q.get("bucket_width", "1d")
    if bucket not in BUCKETS:
        raise ApiError(400, f"bucket_width must be one of {sorted(BUCKETS)}", param="bucket_width",
                       code="invalid_value")
    now = int(time.time())
    end = _unix(q, "end_time", now + 1)
    start = _unix(q, "start_time", end - 7 * BUCKETS["1d"])
    if start >= end:
        raise ApiError(400, "start_time must be before end_time", param="start_time", code="invalid_value")
    if (end - start) > MAX_BUCKETS[bucket] * BUCKETS[bucket]:
        raise ApiError(400, f"at most {MAX_BUCKETS[bucket]} buckets of {bucket}", param="start_time",
                       code="invalid_value")
    group_by = [g for item in q.getlist("group_by") for g in item.split(",") if g]
    if bad := [g for g in group_by if g not in GROUPS]:
        raise ApiError(400, f"group_by: {bad[0]!r} is not one of {sorted(GROUPS)}", param="group_by",
                       code="invalid_value")
    data = await _run(request, usage_buckets, tenant.tenant_id, start, end, bucket, group_by)
    budgets = await request.app.state.chat.budgets.report(limits_for(tenant.spend_scopes))
    return {"object": "page", "data": data, "has_more": False, "next_page": None, "budgets": budgets}


def _unix(q: Any, name: str, default: int) -> int:
    raw = q.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be Unix seconds", param=name, code="invalid_value") from None
    if not 0 <= value < 2**33:
        raise ApiError(400, f"{name} is out of range", param=name, code="invalid_value")
    return value


STATIC = Path(__file__).resolve().parent / "static"


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard() -> HTMLResponse:
    # The page holds no data: it calls the API with the key the user gives it.
    return HTMLResponse((STATIC / "dashboard.html").read_text())


@router.get("/dashboard/plotly.min.js")
async def plotly_js() -> FileResponse:
    import plotly

    # The charting library ships inside the plotly wheel: no CDN, no network at run time.
    bundle = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    return FileResponse(bundle, media_type="application/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})


@router.get("/metrics", response_class=PlainTextResponse)
async def prometheus(request: Request) -> str:
    svc = request.app.state.chat
    counters: dict[str, int] = request.app.state.http_counts
    lines = ["# HELP conflux_edge_open_streams Requests waiting for chunks on this instance.",
             "# TYPE conflux_edge_open_streams gauge",
             f'conflux_edge_open_streams{{instance="{svc.instance_id}"}} {svc.open_requests}',
             "# HELP conflux_edge_http_responses_total HTTP responses by status code.",
             "# TYPE conflux_edge_http_responses_total counter"]
    lines += [f'conflux_edge_http_responses_total{{instance="{svc.instance_id}",code="{code}"}} {n}'
              for code, n in sorted(counters.items())]
    return "\n".join(lines) + "\n"
