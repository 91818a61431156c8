"""Chat requests at the edge: admit (auth, limits), publish to chat.requests, and collect the chain's token
chunks from this instance's reply topic. No model work happens here."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from conflux.ids import ResponseIds
from conflux.kafka import EventPublisher
from conflux.models import CatalogueModelError, ModelCatalogue, ModelSpec, Plan
from conflux.ratelimit import RateLimiter
from conflux.serde import new_envelope
from conflux.tenants import Tenant
from edge.errors import ApiError
from edge.load import LoadGauge
from edge.params import needs_grammar
from edge.protocol import ChatCompletionRequest
from edge.replies import ReplyRouter

IDEMPOTENCY_TTL_S = 24 * 3600


@dataclass(frozen=True)
class Admitted:
    request_id: str
    conversation_id: str
    max_tokens: int
    model: ModelSpec | None  # None for "auto": the routing stage decides


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    citations: list[str]
    tool_calls: list[dict[str, Any]]  # OpenAI's message.tool_calls


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


async def meter(limiter: RateLimiter, plan: Plan, tenant_id: str, tokens: int) -> None:
    """Counts one request of `tokens` against the plan's limits before any work; ApiError(429) when over them
    (with Retry-After, unless the request alone exceeds the plan's tokens per minute and no wait would help).
    Chat, embeddings and moderation requests all pass here."""
    verdict = await limiter.acquire(tenant_id, tokens, plan.requests_per_minute, plan.tokens_per_minute)
    if verdict.allowed:
        return
    if verdict.retry_after_s < 0:
        raise ApiError(429, f"this request (~{tokens} tokens) exceeds the plan's {plan.tokens_per_minute} "
                       "tokens per minute", "rate_limit_error", code="tokens_per_minute_exceeded")
    raise ApiError(429, f"rate limit of plan '{plan.name}' reached; retry after {verdict.retry_after_s}s",
                   "rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": str(verdict.retry_after_s)})


class ChatService:
    def __init__(self, *, publisher: EventPublisher, replies: ReplyRouter, models: ModelCatalogue,
                 limiter: RateLimiter, redis: Any, instance_id: str, chain_timeout_s: float,
                 ids: ResponseIds, load: LoadGauge | None = None) -> None:
        self._ids = ids
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
        if (field := needs_grammar(req)) and model is not None and not model.guided_decoding:
            able = [m.id for m in self._models.models if m.guided_decoding]
            raise ApiError(400, f"{field}: the model '{model.id}' cannot constrain its output; use "
                           f"{', '.join(able)} or auto", param=field, code="unsupported_parameter")
        cap = min(plan.max_output_tokens, model.max_output_tokens if model else plan.max_output_tokens)
        asked = req.output_limit()
        if asked is not None and asked > cap:  # capping it quietly would answer a different request
            field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
            raise ApiError(400, f"{field} is {asked}; at most {cap} output tokens here (plan '{plan.name}'"
                           + (f", model '{model.id}'" if model else "") + ")", param=field, code="max_tokens_too_large")
        max_tokens = asked or cap
        # A cheap upper bound (4 characters a token) is enough to enforce the budget before any work.
        est = sum(len(m.text()) for m in req.messages) // 4 + max_tokens
        await meter(self._limiter, plan, tenant.tenant_id, est)
        request_id = self._ids.new(tenant.tenant_id)
        return Admitted(request_id, conversation_id or request_id, max_tokens, model)

    async def submit(self, tenant: Tenant, req: ChatCompletionRequest, adm: Admitted,
                     traceparent: str | None = None) -> asyncio.Queue[dict[str, Any]]:
        queue = self._replies.register(adm.request_id)
        record = {
            "envelope": new_envelope(tenant_id=tenant.tenant_id, conversation_id=adm.conversation_id,
                                     request_id=adm.request_id, producer=self.instance_id, traceparent=traceparent),
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
            "response_format": json.dumps(req.response_format) if req.response_format else None,
        }
        try:
            await self._publisher.publish("chat.requests", record, key=adm.conversation_id)
        except Exception:
            self._replies.unregister(adm.request_id)
            # The send may still be delivered once the broker is back; the chain must not then generate
            # an answer nobody waits for.
            with contextlib.suppress(RedisError):
                await self.cancel(adm.request_id)
            raise
        return queue

    async def chunks(self, request_id: str, queue: asyncio.Queue[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        """Chunks in sequence order until the final one; ApiError(504) if the chain goes quiet too long."""
        try:
            while True:
                try:
                    chunk = await asyncio.wait_for(queue.get(), self.chain_timeout_s)
                except TimeoutError:
                    raise ApiError(504, f"no answer within {self.chain_timeout_s:.0f}s; the request was cancelled",
                                   "server_error", code="timeout") from None
                yield chunk
                if chunk["is_final"]:
                    return
        finally:
            self._replies.unregister(request_id)

    async def cancel(self, request_id: str) -> None:
        """Tells the inference stage to stop generating (it checks between tokens)."""
        await self._r.set(f"conflux:cancel:{request_id}", "1", ex=600)

    async def collect(self, request_id: str, queue: asyncio.Queue[dict[str, Any]], model: str) -> Completion:
        parts: list[str] = []
        final: dict[str, Any] = {}
        calls = ToolCalls()
        async for chunk in self.chunks(request_id, queue):
            parts.append(chunk["text"])
            calls.add(chunk.get("tool_calls") or [])
            final = chunk
        if final.get("error"):
            raise ApiError(502, final["error"], "server_error", code="generation_failed")
        return Completion("".join(parts), final.get("model") or model, final.get("finish_reason") or "stop",
                          final.get("prompt_tokens") or 0, final.get("completion_tokens") or 0,
                          list(final.get("citations") or []), calls.calls())

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
