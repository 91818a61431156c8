"""Chat requests at the edge: admit (auth, limits), publish to chat.requests, and collect the chain's token
chunks from this instance's reply topic. No model work happens here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from conflux.budget import Budgets, Limit, Standing
from conflux.errors import PublishError
from conflux.ids import ResponseIds
from conflux.kafka import EventPublisher, PendingEvents
from conflux.models import CatalogueModelError, ModelCatalogue, ModelSpec, Plan
from conflux.ratelimit import RateLimiter, Verdict
from conflux.serde import new_envelope
from conflux.tenants import Tenant
from edge.cache import Entry, Lookup, ResponseCache
from edge.errors import ApiError
from edge.load import LoadGauge
from edge.params import logprobs_asked, needs_grammar
from edge.protocol import ChatCompletionRequest
from edge.quota import spend_gate
from edge.replies import ReplyRouter
from edge.semantic_cache import Probe, SemanticCache

log = logging.getLogger("conflux.edge")
IDEMPOTENCY_TTL_S = 24 * 3600
MERGED_QUEUE = 1024  # chunks of n choices waiting for the HTTP writer (each choice's own queue is bounded too)


@dataclass(frozen=True)
class Admitted:
    choice_ids: tuple[str, ...]  # a request id per choice (n of them)
    conversation_id: str
    max_tokens: int
    model: ModelSpec | None  # None for "auto": the routing stage decides
    limits: Verdict  # the plan's rate limits after this request (x-ratelimit-* headers)
    budgets: tuple[Limit, ...] = ()  # the spend counters and limits the worker reserves against
    standing: Standing | None = None  # the tightest budget's standing before this request

    def headers(self) -> dict[str, str]:
        """The rate-limit headers, and the budget's when one applies."""
        return {**self.limits.headers(), **(self.standing.headers() if self.standing else {})}

    @property
    def request_id(self) -> str:
        """The id the client sees: its first choice's."""
        return self.choice_ids[0]


@dataclass(frozen=True)
class Choices:
    """The n choices of one request: a generation each, with its own request id and reply queue."""

    ids: tuple[str, ...]
    queues: list[asyncio.Queue[dict[str, Any]]]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Cached:
    """What the caches had for a request: its answer's chunks, or None (the chain answers)."""
    choices: Choices | None
    header: str  # x-cache: hit | semantic-hit | miss | bypass
    similarity: float | None = None  # a semantic hit's
    probe: Probe | None = None  # a miss's place in the semantic index, where its answer is indexed if stored


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    citations: list[str]
    tool_calls: list[dict[str, Any]]  # OpenAI's message.tool_calls
    logprobs: list[dict[str, Any]]  # OpenAI's logprobs.content (empty unless asked for)


class ToolCalls:
    """Tool-call deltas of a stream, assembled into OpenAI's message.tool_calls."""

    def __init__(self) -> None:
        self._calls: dict[int, dict[str, Any]] = {}

    def add(self, deltas: list[dict[str, Any]]) -> None:
        for d in deltas:
            call = self._calls.setdefault(d["index"], {"id": "", "type": "function",
                                                       "function": {"name": "", "arguments": ""}})
            call["id"] = d.get("id") or call["id"]
            call["function"]["name"] = d.get("name") or call["function"]["name"]
            call["function"]["arguments"] += d.get("arguments") or ""

    def calls(self) -> list[dict[str, Any]]:
        return [self._calls[i] for i in sorted(self._calls)]


# A request the chain refused for what it asked (its finish_reason says why) is the client's error, as OpenAI
# answers it; any other ending with an error is the platform's (502).
REFUSALS = {"context_length_exceeded": 400, "unsupported_parameter": 400, "model_not_found": 404,
            "model_not_allowed": 403, "no_capacity": 503, "insufficient_quota": 429}


def chain_error(final: dict[str, Any]) -> ApiError:
    """The ApiError of a final chunk that ended its request with an error."""
    code = final.get("finish_reason") or ""
    status = REFUSALS.get(code)
    if status is None:
        return ApiError(502, final["error"], "server_error", code="generation_failed")
    if code == "insufficient_quota":
        return ApiError(status, final["error"], code, code=code)
    return ApiError(status, final["error"], "invalid_request_error" if status < 500 else "server_error", code=code)


async def meter(limiter: RateLimiter, plan: Plan, tenant_id: str, tokens: int) -> Verdict:
    """Counts one request of `tokens` against the plan's limits before any work; ApiError(429) when over them
    (with Retry-After, unless the request alone exceeds the plan's tokens per minute and no wait would help).
    Chat, embeddings and moderation requests all pass here; the verdict's headers() go on their answers."""
    verdict = await limiter.acquire(tenant_id, tokens, plan.requests_per_minute, plan.tokens_per_minute)
    if verdict.allowed:
        return verdict
    if verdict.retry_after_s < 0:
        raise ApiError(429, f"this request (~{tokens} tokens) exceeds the plan's {plan.tokens_per_minute} "
                       "tokens per minute", "rate_limit_error", code="tokens_per_minute_exceeded",
                       headers=verdict.headers())
    raise ApiError(429, f"rate limit of plan '{plan.name}' reached; retry after {verdict.retry_after_s}s",
                   "rate_limit_error", code="rate_limit_exceeded",
                   headers={"Retry-After": str(verdict.retry_after_s), **verdict.headers()})


class ChatService:
    def __init__(self, *, publisher: EventPublisher, replies: ReplyRouter, models: ModelCatalogue,
                 limiter: RateLimiter, redis: Any, instance_id: str, chain_timeout_s: float,
                 ids: ResponseIds, budgets: Budgets, cache: ResponseCache, semantic: SemanticCache | None = None,
                 load: LoadGauge | None = None) -> None:
        self._ids = ids
        self.budgets = budgets
        self.cache = cache
        self.semantic = semantic
        # The requests whose answers go into the cache when they end whole: request id -> what to store them as.
        self._recording: dict[str, _Recording] = {}
        self._background: set[asyncio.Future[None]] = set()  # held until done (the loop keeps only weak refs)
        self._load = load
        self._publisher = publisher
        self._replies = replies
        self._models = models
        self._limiter = limiter
        self._r = redis
        self.instance_id = instance_id
        self.chain_timeout_s = chain_timeout_s

    @property
    def open_requests(self) -> int:
        return self._replies.open_requests

    def models_for(self, plan: Plan) -> list[ModelSpec]:
        return [m for m in self._models.models if self._models.allowed(m, plan)]

    async def admit(self, tenant: Tenant, req: ChatCompletionRequest, conversation_id: str | None) -> Admitted:
        """Every check that can refuse the request, before any work is queued."""
        plan = self._models.plan(tenant.plan)
        if self._load is not None:
            self._load.admit(plan)  # first: a request shed under load costs nothing more
        model = None
        if req.model != "auto":
            try:
                model = self._models.get(req.model)
            except CatalogueModelError:
                raise ApiError(404, f"The model '{req.model}' does not exist", code="model_not_found",
                               param="model") from None
            if not self._models.allowed(model, plan):
                raise ApiError(403, f"The model '{req.model}' needs plan '{model.min_plan}'; yours is "
                               f"'{plan.name}'", "permission_error", code="model_not_allowed", param="model")
        if model is not None:
            self._refuse_incapable(model, req)
        cap = min(plan.max_output_tokens, model.max_output_tokens if model else plan.max_output_tokens)
        asked = req.output_limit()
        if asked is not None and asked > cap:  # capping it quietly would answer a different request
            field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
            raise ApiError(400, f"{field} is {asked}; at most {cap} output tokens here (plan '{plan.name}'"
                           + (f", model '{model.id}'" if model else "") + ")", param=field, code="max_tokens_too_large")
        max_tokens = asked or cap
        n = req.n or 1
        # A cheap upper bound (4 characters a token) is enough to enforce the budget before any work; each
        # choice is a whole generation.
        est = (sum(len(m.text()) for m in req.messages) // 4 + max_tokens) * n
        limits = await meter(self._limiter, plan, tenant.tenant_id, est)
        budgets, standing = await spend_gate(self.budgets, tenant)
        ids = tuple(self._ids.new(tenant.tenant_id) for _ in range(n))
        return Admitted(ids, conversation_id or ids[0], max_tokens, model, limits, tuple(budgets), standing)

    def can_guide(self, model_id: str, plan_name: str) -> bool:
        """Whether `model_id` can constrain its output (tools, JSON): for auto, whether the plan has a model that
        can (auto picks it); an unknown or disallowed name is refused by admit either way."""
        if model_id == "auto":
            return any(m.guided_decoding for m in self.models_for(self._models.plan(plan_name)))
        try:
            return self._models.get(model_id).guided_decoding
        except CatalogueModelError:
            return True

    def _refuse_incapable(self, model: ModelSpec, req: ChatCompletionRequest) -> None:
        """ApiError(400) when the request needs what the model named cannot do (auto picks a model that can)."""
        needs: list[tuple[str, str, Callable[[ModelSpec], bool]]] = []
        if field := needs_grammar(req):
            needs.append((field, "cannot constrain its output", lambda m: m.guided_decoding))
        if logprobs_asked(req) is not None:
            needs.append(("logprobs", "returns no logprobs", lambda m: m.logprobs))
        for field, lack, able in needs:
            if not able(model):
                others = [m.id for m in self._models.models if able(m)]
                raise ApiError(400, f"{field}: the model '{model.id}' {lack}; use {', '.join(others)} or auto",
                               param=field, code="unsupported_parameter")

    async def submit(self, tenant: Tenant, req: ChatCompletionRequest, adm: Admitted,
                     traceparent: str | None = None, lookup: Lookup | None = None,
                     probe: Probe | None = None) -> Choices:
        """One chat.requests event per choice; their reply queues, registered before anything is sent. With a
        cache lookup that missed, the answer is recorded on its way to the caller and stored if it ends whole."""
        choices = Choices(adm.choice_ids, [self._replies.register(rid) for rid in adm.choice_ids])
        if lookup is not None and lookup.key is not None and lookup.ttl_s > 0:
            self._recording[adm.request_id] = _Recording(lookup, [], tenant, probe)
        record = {
            "model": req.model,
            "messages": [{"role": m.role, "content": m.text(), "name": m.name, "tool_call_id": m.tool_call_id,
                          "tool_calls": json.dumps(m.tool_calls) if m.tool_calls else None} for m in req.messages],
            "stream": req.stream, "max_tokens": adm.max_tokens,
            "temperature": 1.0 if req.temperature is None else req.temperature,  # OpenAI's default
            "top_p": req.top_p, "seed": req.seed, "presence_penalty": req.presence_penalty,
            "frequency_penalty": req.frequency_penalty, "stop": req.stop_sequences(),
            "reply_topic": self._replies.topic, "reply_partition": 0, "user": req.user or req.safety_identifier,
            "metadata": dict(req.metadata or {}),
            "tools": json.dumps(req.tools) if req.tools else None,
            "tool_choice": json.dumps(req.tool_choice) if req.tool_choice is not None else None,
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "server_tools": json.dumps(req.server_tools) if req.server_tools else None,
            "response_format": json.dumps(req.response_format) if req.response_format else None,
            "top_logprobs": logprobs_asked(req), "choices": len(choices),
            "key_id": tenant.key_id, "budgets": [b.record() for b in adm.budgets],
        }
        try:
            for i, rid in enumerate(choices.ids):
                await self._publisher.publish("chat.requests", {
                    **record, "choice": i,
                    # The same seed for every choice would give n copies of one answer.
                    "seed": None if req.seed is None else req.seed + i,
                    "envelope": new_envelope(tenant_id=tenant.tenant_id, conversation_id=adm.conversation_id,
                                             request_id=rid, producer=self.instance_id, traceparent=traceparent),
                }, key=adm.conversation_id)
        except Exception:
            self._recording.pop(adm.request_id, None)
            for rid in choices.ids:
                self._replies.unregister(rid)
            # The send may still be delivered once the broker is back; the chain must not then generate
            # an answer nobody waits for.
            with contextlib.suppress(RedisError):
                await self.cancel(choices)
            raise
        return choices

    async def chunks(self, request_id: str, queue: asyncio.Queue[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        """Chunks in sequence order until the final one; ApiError(504) if the chain goes quiet too long."""
        recording = self._recording.get(request_id)
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(queue.get(), self.chain_timeout_s)
                except TimeoutError:
                    raise ApiError(504, f"no answer within {self.chain_timeout_s:.0f}s; the request was cancelled",
                                   "server_error", code="timeout") from None
                if recording is not None:
                    recording.chunks.append(chunk)
                yield chunk
                if chunk["is_final"]:
                    if recording is not None and await self.cache.put(recording.lookup, recording.chunks,
                                                                      self._cost_of(chunk)) \
                            and recording.probe is not None and self.semantic is not None:
                        self._spawn(self.semantic.remember(recording.tenant, recording.probe))
                    return
        finally:
            self._recording.pop(request_id, None)
            self._replies.unregister(request_id)

    def _cost_of(self, final: dict[str, Any]) -> int:
        try:
            model = self._models.get(final.get("model") or "")
        except CatalogueModelError:
            return 0
        return model.cost_micros(final.get("prompt_tokens") or 0, final.get("completion_tokens") or 0)

    async def from_cache(self, tenant: Tenant, req: ChatCompletionRequest, adm: Admitted,
                         lookup: Lookup) -> Cached:
        """The stored answer of this request (exact cache), else of a near-duplicate question (semantic cache),
        as the one choice's chunks: the caller reads them as it reads the chain's. Every lookup is recorded on
        cache.lookups; a hit also on chat.responses (cost 0, what it saved), both acknowledged before its final
        chunk leaves. `Cache-Control: no-cache` looks nothing up (and records no lookup) but still probes the
        semantic index, where the fresh answer is indexed."""
        if lookup.key is None:
            return Cached(None, "bypass")
        entry: Entry | None = await self.cache.get(lookup)
        outcome, similarity, probe = ("hit" if entry else "miss"), None, None
        if entry is None and self.semantic is not None:
            probe = await self.semantic.probe(tenant, lookup)
            found = await self.semantic.find(tenant, probe) if probe is not None else None
            if found is not None:
                entry, outcome, similarity = found.entry, "semantic_hit", found.similarity
        if not lookup.read:
            return Cached(None, "miss", probe=probe)

        def env() -> dict[str, Any]:  # each event its own envelope: its event id is what deduplicates it
            return new_envelope(tenant_id=tenant.tenant_id, conversation_id=adm.conversation_id,
                                request_id=adm.request_id, producer=self.instance_id)

        digest = (lookup.key or "").rsplit(":", 1)[-1][:16]
        events = PendingEvents(self._publisher)
        record = {"envelope": env(), "outcome": outcome, "model": req.model, "key": digest,
                  "key_id": tenant.key_id, "similarity": similarity or 0.0}
        if entry is None:
            await events.add("cache.lookups", record, key=adm.conversation_id)
            # A miss goes on to the chain, whose own events the caller waits for: this one is not waited on.
            self._spawn(_settle_quietly(events))
            return Cached(None, "miss", probe=probe)
        await events.add("cache.lookups", {**record, "answered_by": entry.model, "saved_micros": entry.cost_micros,
                                           "age_s": max(0.0, time.time() - entry.created)}, key=adm.conversation_id)
        final = entry.chunks[-1]
        await events.add("chat.responses", {
            "envelope": env(), "model": entry.model, "content": "".join(c.get("text") or "" for c in entry.chunks),
            "finish_reason": final.get("finish_reason") or "stop", "blocked": False, "error": None,
            "prompt_tokens": final.get("prompt_tokens") or 0, "completion_tokens": final.get("completion_tokens") or 0,
            "citations": list(final.get("citations") or []), "latency_ms": 0.0, "cost_micros": 0,
            "key_id": tenant.key_id, "cached": True, "cache_saved_micros": entry.cost_micros},
            key=adm.conversation_id)
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        for chunk in entry.chunks[:-1]:
            queue.put_nowait(chunk)
        self._spawn(_final_when_recorded(events, queue, entry.chunks[-1]))
        return Cached(Choices((adm.request_id,), [queue]), outcome.replace("_", "-"), similarity)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def merged(self, choices: Choices) -> AsyncIterator[tuple[int, dict[str, Any]]]:
        """(choice index, chunk) of every choice as they come, until each choice's final chunk."""
        if len(choices) == 1:
            async for chunk in self.chunks(choices.ids[0], choices.queues[0]):
                yield 0, chunk
            return
        out: asyncio.Queue[tuple[int, dict[str, Any] | ApiError]] = asyncio.Queue(MERGED_QUEUE)

        async def pump(i: int) -> None:
            try:
                async for chunk in self.chunks(choices.ids[i], choices.queues[i]):
                    await out.put((i, chunk))
            except ApiError as exc:
                await out.put((i, exc))

        pumps = [asyncio.create_task(pump(i)) for i in range(len(choices))]
        try:
            running = len(pumps)
            while running:
                i, item = await out.get()
                if isinstance(item, ApiError):
                    raise item
                yield i, item
                running -= item["is_final"]
        finally:
            for p in pumps:
                p.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)

    async def cancel(self, choices: Choices) -> None:
        """Tells the inference stage to stop generating every choice (it checks between tokens)."""
        for rid in choices.ids:
            await self._r.set(f"conflux:cancel:{rid}", "1", ex=600)

    async def collect_all(self, choices: Choices, model: str) -> list[Completion]:
        """Every choice's whole answer; the first failure ends the wait for the others."""
        waits = [asyncio.ensure_future(self.collect(rid, q, model)) for rid, q in zip(choices.ids, choices.queues,
                                                                                          strict=True)]
        try:
            return list(await asyncio.gather(*waits))
        finally:
            for w in waits:
                w.cancel()

    async def collect(self, request_id: str, queue: asyncio.Queue[dict[str, Any]], model: str) -> Completion:
        parts: list[str] = []
        final: dict[str, Any] = {}
        calls = ToolCalls()
        logprobs: list[dict[str, Any]] = []
        async for chunk in self.chunks(request_id, queue):
            parts.append(chunk["text"])
            calls.add(chunk.get("tool_calls") or [])
            logprobs += chunk.get("logprobs") or []
            final = chunk
        if final.get("error"):
            raise chain_error(final)
        return Completion("".join(parts), final.get("model") or model, final.get("finish_reason") or "stop",
                          final.get("prompt_tokens") or 0, final.get("completion_tokens") or 0,
                          list(final.get("citations") or []), calls.calls(), logprobs)

    def owns(self, tenant_id: str, request_id: str) -> bool:
        """Whether this tenant was issued this response id (the id carries a signature: no lookup)."""
        return self._ids.owned_by(request_id, tenant_id)

    # Idempotency-Key: the first request with a key runs; repeats get its stored answer, or 409 meanwhile.
    async def idempotent_start(self, tenant_id: str, key: str) -> dict[str, Any] | None:
        rkey = f"conflux:idem:{tenant_id}:{key}"
        if await self._r.set(rkey, json.dumps({"state": "running", "since": time.time()}), nx=True,
                             ex=IDEMPOTENCY_TTL_S):
            return None
        stored = json.loads(await self._r.get(rkey) or "{}")
        if stored.get("state") == "done":
            return dict(stored["response"])
        raise ApiError(409, "a request with this Idempotency-Key is still in progress", code="idempotency_conflict")

    async def idempotent_finish(self, tenant_id: str, key: str, response: dict[str, Any] | None) -> None:
        rkey = f"conflux:idem:{tenant_id}:{key}"
        if response is None:
            await self._r.delete(rkey)  # failed: let the client retry with the same key
        else:
            await self._r.set(rkey, json.dumps({"state": "done", "response": response}), ex=IDEMPOTENCY_TTL_S)


@dataclass(frozen=True)
class _Recording:
    lookup: Lookup
    chunks: list[dict[str, Any]]
    tenant: Tenant
    probe: Probe | None


async def _settle_quietly(events: PendingEvents) -> None:
    try:
        await events.settle()
    except PublishError as exc:  # a lost lookup record must not fail the request it describes
        log.warning("cache lookup event not recorded: %r", exc)


async def _final_when_recorded(events: PendingEvents, queue: asyncio.Queue[dict[str, Any]],
                               final: dict[str, Any]) -> None:
    """A cached answer's final chunk, once its events are acknowledged; an explicit error if they cannot be
    (an answer the platform did not record is not served whole)."""
    try:
        await events.settle()
    except PublishError as exc:
        log.warning("cached answer not recorded: %r", exc)
        final = {**final, "error": "the event broker is unavailable; retry the request", "finish_reason": "error"}
    queue.put_nowait(final)
