"""/v1/moderations: OpenAI's moderation API, answered by the same checks as a chat's input (rules + the safety
classifier over the MiniLM embedding served by Triton), with the taxonomy mapped onto OpenAI's categories."""

from __future__ import annotations

import secrets
from typing import Any

from conflux import taxonomy
from conflux.inference import TritonClient
from conflux.ratelimit import RateLimiter
from conflux.safety_model import HEAD_CHARS, SafetyHead, assess
from conflux.tenants import Tenant
from edge.chat import meter
from edge.errors import ApiError

OPENAI_CATEGORIES = ("harassment", "harassment/threatening", "hate", "hate/threatening", "illicit",
                     "illicit/violent", "self-harm", "self-harm/intent", "self-harm/instructions", "sexual",
                     "sexual/minors", "violence", "violence/graphic")
MODEL = "conflux-safety"
# OpenAI's model names are accepted (SDKs send them by default) and served by the one classifier there is.
ACCEPTED_MODELS = {MODEL, "omni-moderation-latest", "omni-moderation-2024-09-26", "text-moderation-latest",
                   "text-moderation-stable"}
MAX_INPUTS = 32
MAX_CHARS = 20_000


class ModerationService:
    def __init__(self, triton: TritonClient, head: SafetyHead, limiter: RateLimiter, models: Any,
                 redis: Any) -> None:
        self._triton = triton
        self._head = head
        self._limiter = limiter
        self._models = models
        self._r = redis
        self._tax = taxonomy.load()

    def _inputs(self, raw: Any) -> list[str]:
        texts = [raw] if isinstance(raw, str) else raw
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ApiError(400, "input must be a string or a non-empty array of strings (images are not moderated "
                           "here)", param="input", code="unsupported_input")
        if len(texts) > MAX_INPUTS or any(len(t) > MAX_CHARS for t in texts):
            raise ApiError(400, f"at most {MAX_INPUTS} inputs of {MAX_CHARS} characters each", param="input",
                           code="input_too_large")
        return texts

    async def moderate(self, tenant: Tenant, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
        """The answer and its headers (the plan's x-ratelimit-*)."""
        unknown = sorted(set(body) - {"input", "model"})
        if unknown:
            raise ApiError(400, f"unsupported parameter: {unknown[0]}", param=unknown[0], code="unsupported_parameter")
        model = body.get("model") or MODEL
        if model not in ACCEPTED_MODELS:
            raise ApiError(400, f"unknown moderation model {model!r}; use {MODEL}", param="model",
                           code="model_not_found")
        texts = self._inputs(body.get("input"))
        plan = self._models.plan(tenant.plan)
        limits = await meter(self._limiter, plan, tenant.tenant_id, sum(len(t) for t in texts) // 4)
        policy = taxonomy.tenant_policy(tenant.tenant_id,
                                        await self._r.hget(f"conflux:tenant:{tenant.tenant_id}", "safety_policy"))
        heads = await self._triton.embed([t[:HEAD_CHARS] for t in texts])  # one batch for every input's head
        results = []
        for text, vector in zip(texts, heads, strict=True):
            a = await assess(self._triton, self._head, policy, text, head_vector=vector)
            results.append(self._result(a.categories, a.model.scores, a.verdict, a.model.p_unsafe))
        return {"id": "modr-" + secrets.token_hex(12), "model": model, "results": results}, limits.headers()

    def _result(self, cats: list[str], scores: dict[str, float], verdict: str, p_unsafe: float) -> dict[str, Any]:
        flags = dict.fromkeys(OPENAI_CATEGORIES, False)
        oscores = dict.fromkeys(OPENAI_CATEGORIES, 0.0)
        for cid, cat in self._tax.categories.items():
            for o in cat.openai:
                oscores[o] = max(oscores[o], round(scores.get(cid, 0.0), 6))
                flags[o] = flags[o] or cid in cats
        hazards = [c for c in cats if c != "pii"]
        return {"flagged": bool(hazards), "categories": flags, "category_scores": oscores,
                "category_applied_input_types": {o: ["text"] for o in OPENAI_CATEGORIES},
                # Conflux extension: the taxonomy's own categories (attacks have no OpenAI equivalent) and what
                # this tenant's policy would do with the text as a chat prompt.
                "conflux": {"categories": cats, "verdict": verdict.lower(), "p_unsafe": round(p_unsafe, 4)}}

