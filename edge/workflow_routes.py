"""Workflow runs over HTTP (logic in edge/workflows.py): start an article, read, list, cancel, follow live."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from edge.routes import _json_object, _tenant
from edge.workflows import WorkflowService

router = APIRouter()


def _svc(request: Request) -> WorkflowService:
    return request.app.state.workflows  # type: ignore[no-any-return]


@router.post("/v1/workflows/{name}", response_model=None)
async def start_run(name: str, request: Request, authorization: str | None = Header(default=None),
                    idempotency_key: str | None = Header(default=None)) -> JSONResponse:
    """Starts a run of workflow `name` (article: {"topic", "audience"?, "sections"?, "model"?})."""
    tenant = await _tenant(request, authorization)
    run, headers, created = await _svc(request).create(tenant, name, await _json_object(request), idempotency_key)
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(run, status_code=202 if created else 200, headers=headers)


@router.get("/v1/workflows")
async def list_runs(request: Request, limit: int = Query(default=20, ge=1, le=100),
                    authorization: str | None = Header(default=None)) -> dict[str, Any]:
    return await _svc(request).list(await _tenant(request, authorization), limit)


@router.get("/v1/workflows/{run_id}")
async def get_run(run_id: str, request: Request, authorization: str | None = Header(default=None)) -> dict[str, Any]:
    return await _svc(request).get(await _tenant(request, authorization), run_id)


@router.post("/v1/workflows/{run_id}/cancel")
async def cancel_run(run_id: str, request: Request,
                     authorization: str | None = Header(default=None)) -> dict[str, Any]:
    return await _svc(request).cancel(await _tenant(request, authorization), run_id)


@router.get("/v1/workflows/{run_id}/events", response_model=None)
async def run_events(run_id: str, request: Request,
                     authorization: str | None = Header(default=None)) -> StreamingResponse:
    stream = await _svc(request).events(await _tenant(request, authorization), run_id)
    return StreamingResponse(stream, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
