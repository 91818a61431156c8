"""The workflow API's logic (edge/workflow_routes.py has the routes): checking a run request, admitting it
(rate limit, spend gate), storing it and recording it on workflow.runs, and the run as callers see it.

A run is stored before its `requested` event is published, and that event is acknowledged before the caller
gets the run's id: a worker picks it up from there (streams/workflow/start.py), whatever happens to this edge.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from conflux.budget import Budgets
from conflux.errors import PublishError
from conflux.kafka import EventPublisher
from conflux.models import CatalogueModelError, ModelCatalogue
from conflux.ratelimit import RateLimiter
from conflux.serde import new_envelope
from conflux.tenants import Tenant
from conflux.workflow_spec import Workflow, WorkflowSpecError, load_workflow
from conflux.workflow_store import TERMINAL, RunState, WorkflowStore, end_record, stable_id
from edge.chat import meter
from edge.errors import ApiError
from edge.quota import spend_gate

ARTICLE_FIELDS = {"topic", "audience", "sections", "model"}
DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_SECTIONS = 4
MAX_TOPIC = 300
MAX_AUDIENCE = 200
MAX_HEADING = 80
ESTIMATED_TOKENS = 2000  # what one article counts against the plan's tokens per minute at admission
EVENTS_POLL_S = 0.25
EVENTS_MAX_S = 1800.0
PING_S = 15.0


def _bad(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code=code)


def default_model(wf: Workflow, models: ModelCatalogue, plan: str) -> str:
    """The first of the workflow's models the plan allows (those the catalogue lacks are skipped)."""
    ids = {m.id for m in models.models}
    for model_id in wf.models:
        if model_id in ids and models.allowed(models.get(model_id), models.plan(plan)):
            return model_id
    return DEFAULT_MODEL


def article_input(body: dict[str, Any], wf: Workflow, models: ModelCatalogue, plan: str) -> dict[str, Any]:
    """The checked input of an article run, or ApiError(400/404) naming the field at fault."""
    if unknown := sorted(set(body) - ARTICLE_FIELDS):
        raise ApiError(400, f"Unrecognized request argument supplied: {unknown[0]} (an article takes "
                       f"{sorted(ARTICLE_FIELDS)})", param=unknown[0], code="unknown_parameter")
    topic = body.get("topic")
    if not isinstance(topic, str) or not topic.strip():
        raise _bad("topic", "required, a non-empty string", "missing_required_parameter" if topic is None
                   else "invalid_value")
    if len(topic) > MAX_TOPIC:
        raise _bad("topic", f"at most {MAX_TOPIC} characters")
    audience = body.get("audience")
    if audience is not None and (not isinstance(audience, str) or len(audience) > MAX_AUDIENCE):
        raise _bad("audience", f"a string of at most {MAX_AUDIENCE} characters")
    sections = body.get("sections", DEFAULT_SECTIONS)
    if isinstance(sections, list):
        if not 1 <= len(sections) <= wf.max_items or not all(
                isinstance(s, str) and s.strip() and len(s) <= MAX_HEADING for s in sections):
            raise _bad("sections", f"a count, or a list of 1 to {wf.max_items} headings of at most {MAX_HEADING} "
                       "characters each")
        sections = [s.strip() for s in sections]
    elif isinstance(sections, bool) or not isinstance(sections, int) or not 1 <= sections <= wf.max_items:
        raise _bad("sections", f"a count from 1 to {wf.max_items}, or a list of headings")
    model_id = body["model"] if "model" in body else default_model(wf, models, plan)
    try:
        model = models.get(model_id) if isinstance(model_id, str) else None
    except CatalogueModelError:
        model = None
    if model is None:
        raise ApiError(404, f"The model '{model_id}' does not exist", "not_found_error", param="model",
                       code="model_not_found")
    if not models.allowed(model, models.plan(plan)):
        raise ApiError(403, f"the model '{model.id}' needs plan '{model.min_plan}' or above", "permission_error",
                       param="model", code="model_not_allowed")
    return {"topic": topic.strip(), "audience": (audience or "").strip() or None, "sections": sections,
            "model": model.id}


def _progress(wf: Workflow, inst: str, status: str, tokens: int) -> float:
    """0 to 1: a generate step's tokens so far against its max_tokens while it runs; other steps jump to 1."""
    if status == "succeeded":
        return 1.0
    spec, _ = wf.step(inst)
    if status != "running" or spec.max_tokens < 1:
        return 0.0
    return round(min(0.99, tokens / spec.max_tokens), 3)


def view(run: RunState, wf: Workflow, detail: bool = True) -> dict[str, Any]:
    """A run as the API shows it: every step instance known so far, in order (pending ones included)."""
    out: dict[str, Any] = {
        "id": run.run_id, "object": "workflow.run", "workflow": run.workflow, "status": run.status,
        "created_at": int(run.created), "ended_at": int(run.ended) if run.ended else None,
        "input": {k: v for k, v in run.input.items() if v is not None}, "cost_usd": run.cost_micros / 1e6,
        "error": run.error}
    if not detail:
        return out
    steps = []
    for inst in wf.instances(run.items):
        rec = run.steps.get(inst, {})
        status = rec.get("status", "pending")
        steps.append({"step": inst, "status": status, "attempts": rec.get("attempt", 0),
                      "progress": _progress(wf, inst, status, run.progress.get(inst, 0)),
                      "worker": rec.get("worker"), "started_at": rec.get("started"), "ended_at": rec.get("ended"),
                      "latency_ms": rec.get("latency_ms"), "model": rec.get("model"),
                      "cost_usd": (rec.get("cost_micros") or 0) / 1e6, "error": rec.get("error"),
                      # Why a step's output was not used as is (an edit that broke the article: the draft stands).
                      "note": (rec.get("output") or {}).get("why")})
    result = run.result or {}
    return {**out, "steps": steps, "article": result.get("article"), "sections": result.get("sections"),
            "citations": result.get("citations", [])}


class WorkflowService:
    def __init__(self, redis: Any, publisher: EventPublisher, models: ModelCatalogue, limiter: RateLimiter,
                 budgets: Budgets, instance_id: str) -> None:
        self._store = WorkflowStore(redis)
        self._publisher = publisher
        self._models = models
        self._limiter = limiter
        self._budgets = budgets
        self._instance = instance_id
        self._workflows: dict[str, Workflow] = {}

    def workflow(self, name: str) -> Workflow:
        if name not in self._workflows:
            try:
                self._workflows[name] = load_workflow(name)
            except WorkflowSpecError:
                raise ApiError(404, f"no workflow named {name!r}", "not_found_error", code="not_found") from None
        return self._workflows[name]

    async def create(self, tenant: Tenant, name: str, body: dict[str, Any],
                     idempotency_key: str | None) -> tuple[dict[str, Any], dict[str, str], bool]:
        """(the run, headers, created). A repeat of an Idempotency-Key returns the first run, not a new one."""
        wf = self.workflow(name)
        inputs = article_input(body, wf, self._models, tenant.plan)
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 255:
            raise ApiError(400, "Idempotency-Key: 1 to 255 characters", param="Idempotency-Key", code="invalid_value")
        limits = await meter(self._limiter, self._models.plan(tenant.plan), tenant.tenant_id, ESTIMATED_TOKENS)
        budgets, standing = await spend_gate(self._budgets, tenant)  # each step holds its own worst case
        headers = {**limits.headers(), **(standing.headers() if standing else {})}
        run_id = f"wf_{uuid.uuid4().hex}"
        digest = hashlib.sha256(json.dumps([name, inputs], sort_keys=True).encode()).hexdigest()[:32]
        try:
            run_id, created = await self._store.create(
                run_id, tenant.tenant_id, name, inputs, tenant.key_id, [b.record() for b in budgets],
                (idempotency_key, digest) if idempotency_key is not None else None)
        except ValueError as exc:
            raise ApiError(409, str(exc), code="idempotency_key_reused") from None
        run = await self._store.get(run_id)
        if run is None:
            raise ApiError(404, f"run {run_id} has expired", "not_found_error", code="not_found")
        if created:
            env = new_envelope(tenant_id=tenant.tenant_id, conversation_id=run_id, request_id=run_id,
                               producer=self._instance)
            try:
                # Acknowledged before the caller learns the id: from here a worker will run it.
                await self._publisher.publish("workflow.runs", {
                    "envelope": env, "run_id": run_id, "workflow": name, "status": "requested",
                    "input": json.dumps(inputs), "key_id": tenant.key_id, "result": None, "error": None,
                    "cost_micros": 0, "duration_ms": None}, key=run_id)
            except PublishError as exc:
                await self._store.finish(run_id, "failed", error="the event broker did not accept the run")
                raise ApiError(503, f"the run could not be recorded: {exc}", "server_error",
                               code="service_unavailable") from None
        return view(run, wf), headers, created

    async def _run(self, tenant: Tenant, run_id: str) -> tuple[RunState, Workflow]:
        run = await self._store.get(run_id) if run_id.startswith("wf_") else None
        if run is None or run.tenant_id != tenant.tenant_id:  # another tenant's run does not exist for this one
            raise ApiError(404, f"no workflow run {run_id!r}", "not_found_error", param="id", code="not_found")
        return run, self.workflow(run.workflow)

    async def get(self, tenant: Tenant, run_id: str) -> dict[str, Any]:
        return view(*await self._run(tenant, run_id))

    async def list(self, tenant: Tenant, limit: int) -> dict[str, Any]:
        runs = [await self._store.get(r) for r in await self._store.runs_of(tenant.tenant_id, limit)]
        data = [view(r, self.workflow(r.workflow), detail=False) for r in runs if r is not None]
        return {"object": "list", "data": data}

    async def cancel(self, tenant: Tenant, run_id: str) -> dict[str, Any]:
        run, wf = await self._run(tenant, run_id)
        if not await self._store.finish(run_id, "cancelled", error="cancelled by the caller"):
            fresh = await self._store.get(run_id)
            status = fresh.status if fresh else run.status
            raise ApiError(409, f"run {run_id} has already {status}", code="run_ended")
        run, wf = await self._run(tenant, run_id)
        env = {**new_envelope(tenant_id=tenant.tenant_id, conversation_id=run_id, request_id=run_id,
                              producer=self._instance), "event_id": stable_id(run_id, "end")}
        await self._publisher.publish("workflow.runs", end_record(run, env), key=run_id)
        return view(run, wf)

    async def events(self, tenant: Tenant, run_id: str) -> AsyncIterator[str]:
        """Server-sent events of a run: `step` whenever a step's state or progress changes, then `run` once it has ended
        (the whole run, article included). Checked before streaming starts, so a bad id is a plain 404."""
        run, wf = await self._run(tenant, run_id)

        async def stream(run: RunState) -> AsyncIterator[str]:
            seen: dict[str, tuple[Any, ...]] = {}
            started = last = time.monotonic()
            while True:
                current = view(run, wf)
                for s in current["steps"]:
                    mark = (s["status"], s["attempts"], s["progress"])
                    if seen.get(s["step"]) != mark:
                        seen[s["step"]] = mark
                        last = time.monotonic()
                        yield f"event: step\ndata: {json.dumps(s)}\n\n"
                if run.status in TERMINAL:
                    yield f"event: run\ndata: {json.dumps(current)}\n\n"
                    return
                if time.monotonic() - started > EVENTS_MAX_S:
                    yield "event: timeout\ndata: {}\n\n"
                    return
                if time.monotonic() - last > PING_S:
                    last = time.monotonic()
                    yield ": ping\n\n"  # keeps proxies from closing a quiet stream
                await asyncio.sleep(EVENTS_POLL_S)
                fresh = await self._store.get(run_id)
                if fresh is None:
                    return
                run = fresh

        return stream(run)
