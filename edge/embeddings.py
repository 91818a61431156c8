"""/v1/embeddings: OpenAI's embeddings API on MiniLM (all-MiniLM-L6-v2, 384 dimensions), served by Triton.

The edge calls Triton itself: an embedding is one batched forward pass with nothing to orchestrate, so a hop
through Kafka and a worker would only add latency. What the chain records for a chat, this records too: the
request is authenticated, metered against the plan's limits before any work, and recorded on
`embeddings.created` (counts and cost, never the texts) before the answer leaves.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np

from conflux.budget import Budgets, cost_micros, price_picos
from conflux.ids import ResponseIds
from conflux.inference import InferenceError, TritonClient
from conflux.kafka import EventPublisher
from conflux.ratelimit import RateLimiter
from conflux.serde import new_envelope
from conflux.tenants import Tenant
from edge.chat import meter
from edge.errors import ApiError
from edge.quota import quota_error, spend_gate
from model_runtime.minilm import load_tokenizer

MODEL = "all-minilm-l6-v2"
TRITON_MODEL = "minilm_embed"
ALIASES = {MODEL, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}
DIMENSIONS = 384
MAX_TOKENS = 256  # MiniLM's sequence length: a longer input would be cut silently, so it is refused instead
MAX_INPUTS = 2048  # OpenAI's limit
PRICE_PER_1K = 0.00001
FIELDS = {"input", "model", "encoding_format", "dimensions", "user"}


class EmbeddingService:
    def __init__(self, *, triton: TritonClient, limiter: RateLimiter, models: Any, publisher: EventPublisher,
                 ids: ResponseIds, instance_id: str, budgets: Budgets) -> None:
        self._budgets = budgets
        self._triton = triton
        self._limiter = limiter
        self._models = models
        self._publisher = publisher
        self._ids = ids
        self._instance = instance_id
        self._tok = load_tokenizer()

    def _texts(self, raw: Any) -> list[str]:
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts:
            raise ApiError(400, "input must be a string or a non-empty array of strings", param="input",
                           code="invalid_value")
        if not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "input: token arrays are not accepted (their ids would be another tokenizer's); "
                           "send text", param="input", code="unsupported_parameter")
        if len(texts) > MAX_INPUTS:
            raise ApiError(400, f"input: at most {MAX_INPUTS} texts per request", param="input",
                           code="invalid_value")
        if any(not t for t in texts):
            raise ApiError(400, "input: an empty string cannot be embedded", param="input", code="invalid_value")
        return texts

    async def create(self, tenant: Tenant, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """The answer and its headers (the plan's x-ratelimit-*)."""
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise ApiError(400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0],
                           code="unknown_parameter")
        model = body.get("model")
        if model not in ALIASES:
            raise ApiError(404, f"The model '{model}' does not exist; embeddings are served by {MODEL}",
                           "not_found_error", param="model", code="model_not_found")
        fmt = body.get("encoding_format") or "float"
        if fmt not in ("float", "base64"):
            raise ApiError(400, "encoding_format must be float or base64", param="encoding_format",
                           code="invalid_value")
        dims = body.get("dimensions")
        if dims is not None and dims != DIMENSIONS:
            raise ApiError(400, f"dimensions: {MODEL} gives {DIMENSIONS} dimensions and cannot shorten them",
                           param="dimensions", code="unsupported_parameter")
        user = body.get("user")
        if user is not None and not isinstance(user, str):
            raise ApiError(400, "user must be a string", param="user", code="invalid_value")
        texts = self._texts(body.get("input"))
        counts = [len(e.ids) for e in self._tok.encode_batch(texts)]
        if (longest := max(counts)) > MAX_TOKENS:
            at = counts.index(longest)
            raise ApiError(400, f"input[{at}] is {longest} tokens; {MODEL} reads at most {MAX_TOKENS}",
                           param="input", code="context_length_exceeded")
        tokens = sum(counts)
        plan = self._models.plan(tenant.plan)
        limits = await meter(self._limiter, plan, tenant.tenant_id, tokens)
        request_id = self._ids.new(tenant.tenant_id)
        budgets, standing = await spend_gate(self._budgets, tenant)
        # The cost is known before the work: it is held against the budgets, and settled once recorded.
        cost = cost_micros(tokens, 0, price_picos(PRICE_PER_1K), 0)
        if (short := await self._budgets.reserve(request_id, budgets, cost, tokens)) is not None:
            raise quota_error(f"You exceeded your current quota: this request (${cost / 1e6:.6f}, {tokens} tokens) "
                              f"does not fit in the budget of {short.scope.split(':')[0]}", standing)
        charged = 0
        try:
            t0 = time.perf_counter()
            try:
                vectors = await self._triton.embed(texts, TRITON_MODEL)  # split at the model's batch size
            except InferenceError as exc:
                raise ApiError(502, f"the embedding model failed: {exc}", "server_error",
                               code="embedding_failed") from None
            latency = (time.perf_counter() - t0) * 1000
            # Recorded (and acknowledged) before the answer leaves: a served embedding is never unmetered.
            await self._publisher.publish("embeddings.created", {
                "envelope": new_envelope(tenant_id=tenant.tenant_id, conversation_id=request_id,
                                         request_id=request_id, producer=self._instance),
                "model": MODEL, "triton_model": TRITON_MODEL, "inputs": len(texts), "prompt_tokens": tokens,
                "dimensions": DIMENSIONS, "encoding_format": fmt, "latency_ms": latency,
                "cost_usd": tokens / 1000 * PRICE_PER_1K, "cost_micros": cost, "key_id": tenant.key_id,
                "user": user}, key=request_id)
            charged = cost
        finally:
            await self._budgets.settle(request_id, charged, tokens if charged else 0)
        headers = {**limits.headers(), **(standing.headers() if standing else {})}
        data = [{"object": "embedding", "index": i, "embedding": _encode(v, fmt)} for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": MODEL, "id": request_id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}, headers


def _encode(vector: Any, fmt: str) -> Any:
    v = np.asarray(vector, dtype="<f4")  # OpenAI's base64 is little-endian float32
    return base64.b64encode(v.tobytes()).decode() if fmt == "base64" else v.tolist()
