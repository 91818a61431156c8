"""Routing: pick the model variant (conflux/routing.py) from what Triton serves and how loaded each model
is, reserve the request's worst-case cost against its budgets, and record why."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from conflux.budget import Limit, renews_at
from conflux.routing import Decision, Features, RoutingError, route
from conflux.triton_load import Counters, ModelLoad, load, parse
from streams.deps import Deps
from streams.prompt_build import Built
from streams.request import RequestContext

READY_TTL_S = 5.0
LOAD_TTL_S = 1.0
# A sample older than this is not used (routing goes on without load until the next one): after a quiet spell the
# last sample still shows the queue of the burst before it, and a model long idle would read as busy.
LOAD_STALE_S = 5.0
log = logging.getLogger("conflux.streams")


class ReadyModels:
    """The Triton models that are READY, asked of Triton at most every READY_TTL_S by this worker (a model that
    goes down in between fails its request with a clear error from the inference stage)."""

    def __init__(self, ttl_s: float = READY_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._ready: set[str] = set()
        self._at = float("-inf")

    async def get(self, deps: Deps) -> set[str]:
        if time.monotonic() - self._at > self._ttl_s:
            index = await deps.triton.repository_index()
            self._ready = {m["name"] for m in index.get("models", []) if m.get("state") == "READY"}
            self._at = time.monotonic()
        return self._ready


class TritonLoad:
    """Each Triton model's queue, from Triton's metrics, sampled at most every LOAD_TTL_S by this worker: in
    the background, so that no request waits for a scrape (routing reads the latest sample; an idle worker does
    not scrape). Unknown (empty) until the first sample and while the metrics cannot be read: routing then goes
    on without load, as before, rather than failing the request; so does a sample older than LOAD_STALE_S."""

    def __init__(self, metrics_url: str, ttl_s: float = LOAD_TTL_S, stale_s: float = LOAD_STALE_S) -> None:
        self._url = metrics_url
        self._ttl_s = ttl_s
        self._stale_s = stale_s
        self._http = httpx.AsyncClient(timeout=0.5)
        self._counters: dict[str, Counters] = {}
        self._load: dict[str, ModelLoad] = {}  # the latest sample; also each model's pace for the next one
        self._at = float("-inf")
        self._sampled_at = float("-inf")
        self._refreshing: asyncio.Task[None] | None = None

    async def get(self) -> dict[str, ModelLoad]:
        now = time.monotonic()
        if now - self._at > self._ttl_s and (self._refreshing is None or self._refreshing.done()):
            self._at = now  # one scrape per interval, also when it fails
            self._refreshing = asyncio.create_task(self._refresh())
        return self._load if now - self._sampled_at <= self._stale_s else {}

    async def _refresh(self) -> None:
        try:
            resp = await self._http.get(self._url)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            log.warning("Triton metrics unavailable (%r): routing without load", exc)
            self._load = {}
            return
        now = parse(resp.text)
        self._load, self._counters = load(self._counters, now, self._load), now
        self._sampled_at = time.monotonic()

    async def close(self) -> None:
        await self._http.aclose()


async def choose(deps: Deps, rc: RequestContext, built: Built) -> Decision | None:
    """The routing decision, recorded on routing.decisions; None when the request is refused (the caller then
    ends it with the refusal's code)."""
    request = rc.request
    plan = deps.models.plan(rc.plan)
    features = Features(prompt_tokens=built.prompt_tokens, max_output_tokens=rc.max_tokens,
                        turns=len(built.messages), text=rc.newest_user_message,
                        guided=rc.guide is not None, logprobs=request.get("top_logprobs") is not None,
                        sources=len(built.sources))
    try:
        decision = route(request["model"], deps.models, plan, features, await deps.ready_models.get(deps),
                         await deps.model_load.get())
        await _reserve(deps, rc, decision, built)
    except RoutingError as exc:
        await rc.events.add("routing.decisions", {
            "envelope": deps.envelope(rc.env), "requested_model": request["model"], "chosen_model": "",
            "triton_model": "", "tier": plan.name, "reason": f"refused ({exc.code}): {exc}", "candidates": [],
            "estimated_cost_usd": 0.0}, key=rc.key)
        await deps.finish_with_error(request, str(exc), finish_reason=exc.code, events=rc.events)
        return None
    await record(deps, rc, decision)
    return decision


async def record(deps: Deps, rc: RequestContext, decision: Decision) -> None:
    """A decision on routing.decisions: the routing stage's, or a fallback's (streams/inference.py)."""
    await rc.events.add("routing.decisions", {
        "envelope": deps.envelope(rc.env), "requested_model": rc.request["model"], "chosen_model": decision.model.id,
        "triton_model": decision.model.triton_stream, "tier": rc.plan, "reason": decision.reason,
        "candidates": list(decision.candidates), "estimated_cost_usd": decision.estimated_cost_usd,
        "load": [seen.record(model) for model, seen in decision.load]}, key=rc.key)


async def _reserve(deps: Deps, rc: RequestContext, decision: Decision, built: Built) -> None:
    """Holds the request's worst-case cost (the whole prompt, every output token it may generate, on the
    dearest of its model and fallbacks) against each budget that applies, before any inference;
    RoutingError("insufficient_quota") when one has no room. A replay finds its hold already made."""
    limits = [Limit.of(r) for r in rc.request.get("budgets") or []]
    if not limits:
        return
    micros = max(m.cost_micros(built.prompt_tokens, rc.max_tokens) for m in (decision.model, *decision.fallbacks))
    tokens = built.prompt_tokens + rc.max_tokens
    if (short := await deps.budgets.reserve(rc.request_id, limits, micros, tokens)) is not None:
        whose = short.scope.split(":")[0]
        raise RoutingError(f"You exceeded your current quota: this request may cost up to ${micros / 1e6:.6f} "
                           f"and {tokens} tokens ({decision.model.id}, max_tokens {rc.max_tokens}); the {whose}'s "
                           f"budget does not have that left (it renews at {renews_at(short.window).isoformat()})",
                           "insufficient_quota")
