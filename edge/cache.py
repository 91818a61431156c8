"""Exact response cache, at the edge, in Redis: a deterministic chat request (temperature 0, or a seed) that
was answered before is answered again from the stored chunks, in the same chunk shape, without crossing
Kafka or touching a model.

The key is a SHA-256 over everything that decides the prompt as built and the answer: the tenant, its system
prompt, safety policy and documents version (bumped by every ingest, so a retrieval answer never outlives its
sources), the model asked for and the catalogue's fingerprint (model versions), the safety classifier's
version, the grounded prompt's instruction, the messages, and every field that shapes the answer (tools,
response_format, stop, n, seed, sampling, max_tokens, logprobs). A change of any of them is a different key:
nothing needs to be deleted, old entries age out with their TTL. The tenant id is in the Redis key too: never
across tenants.

Not cached: sampled requests (temperature > 0 without a seed), n > 1, requests that continue a conversation
from session memory (X-Conversation-Id), `Cache-Control: no-store` (neither read nor written) and tenants that
turned it off; `Cache-Control: no-cache` answers afresh and stores the new answer. Only whole answers are
stored (finish stop, length or tool_calls): never an error, a refusal or a blocked answer.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from conflux import grounding
from conflux.models import ModelCatalogue
from conflux.tenants import Tenant
from edge.params import logprobs_asked
from edge.protocol import ChatCompletionRequest

log = logging.getLogger("conflux.edge")
CACHE_VERSION = 1  # bump when the stored shape or the key's material changes
DEFAULT_TTL_S = 3600
STORED_FINISHES = {"stop", "length", "tool_calls"}
# What a stored chunk keeps (its envelope, epoch and sequence belong to the request that made it).
CHUNK_FIELDS = ("text", "is_final", "finish_reason", "error", "model", "prompt_tokens", "completion_tokens",
                "tool_calls", "logprobs", "citations")


@dataclass(frozen=True)
class Lookup:
    key: str | None  # the Redis key; None when the request is not cacheable
    outcome: str  # "lookup", or "bypass: <why>"
    read: bool  # whether a stored answer may be served
    ttl_s: int  # how long a fresh answer is kept (0: not stored)
    # For the semantic cache (edge/semantic_cache.py): the digest of everything in the key but the last user
    # message (None when the request does not end with one), and that message.
    scope: str | None = None
    question: str = ""


@dataclass(frozen=True)
class Entry:
    chunks: list[dict[str, Any]]
    model: str
    cost_micros: int  # what the stored answer cost when it was generated: what a hit saves
    created: float


def fingerprint(models: ModelCatalogue, safety_head: Path) -> str:
    """The catalogue (every model's id, Triton model, template and version), the safety classifier's weights and
    the grounded prompt's instruction: a change of any is a different cache (a new instruction is a new prompt)."""
    h = hashlib.sha256()
    for m in models.models:
        h.update(f"{m.id}|{m.triton_stream}|{m.template}|{m.version}\n".encode())
    h.update(safety_head.read_bytes())
    h.update(grounding.INSTRUCTION.encode())
    return h.hexdigest()[:16]


def _digest(material: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


class ResponseCache:
    def __init__(self, redis: Any, salt: str, default_ttl_s: int = DEFAULT_TTL_S) -> None:
        self._r = redis
        self._salt = salt  # fingerprint(): catalogue and safety model
        self._ttl_s = default_ttl_s

    def lookup_for(self, tenant: Tenant, req: ChatCompletionRequest, max_tokens: int, conversation: str | None,
                   cache_control: str | None) -> Lookup:
        """Whether and under which key this request may be answered from, or stored into, the cache."""
        ttl = self._ttl_s if tenant.cache_ttl_s is None else tenant.cache_ttl_s
        directives = {d.strip().lower() for d in (cache_control or "").split(",")}
        why = ("the tenant turned the cache off" if ttl <= 0 else
               "Cache-Control: no-store" if "no-store" in directives else
               "n > 1" if (req.n or 1) > 1 else
               "continues a conversation from session memory" if conversation else
               "sampled (temperature > 0 without a seed)" if req.seed is None and req.temperature != 0 else
               "server tools read live data" if req.server_tools else "")
        if why:
            return Lookup(None, f"bypass: {why}", False, 0)
        messages = [{"role": m.role, "content": m.text(), "name": m.name, "tool_call_id": m.tool_call_id,
                     "tool_calls": m.tool_calls} for m in req.messages]
        material: dict[str, Any] = {
            "v": CACHE_VERSION, "salt": self._salt, "tenant": tenant.tenant_id, "tenant_state": tenant.cache_salt,
            "model": req.model, "max_tokens": max_tokens,
            "messages": messages,
            "temperature": 1.0 if req.temperature is None else req.temperature, "top_p": req.top_p,
            "seed": req.seed, "presence_penalty": req.presence_penalty, "frequency_penalty": req.frequency_penalty,
            "stop": req.stop_sequences(), "tools": req.tools, "tool_choice": req.tool_choice,
            "parallel_tool_calls": req.parallel_tool_calls is not False, "response_format": req.response_format,
            "top_logprobs": logprobs_asked(req),
        }
        scope, question = None, ""
        if messages and messages[-1]["role"] == "user":
            question = req.messages[-1].text()
            scope = _digest({**material, "messages": [*messages[:-1], {**messages[-1], "content": None}]})[:16]
        return Lookup(f"conflux:cache:{tenant.tenant_id}:{_digest(material)}", "lookup", "no-cache" not in directives,
                      ttl, scope, question)

    async def get(self, lookup: Lookup) -> Entry | None:
        """The stored answer, or None (a miss; also when Redis fails: the cache never fails a request)."""
        if lookup.key is None or not lookup.read:
            return None
        return await self.entry(lookup.key)

    async def entry(self, key: str) -> Entry | None:
        """The answer stored under this key (the semantic cache's neighbour), or None, as `get`."""
        try:
            raw = await self._r.get(key)
        except RedisError as exc:
            log.warning("cache lookup failed, answering afresh: %r", exc)
            return None
        if raw is None:
            return None
        doc = json.loads(raw)
        return Entry(doc["chunks"], doc["model"], int(doc["cost_micros"]), float(doc["created"]))

    async def put(self, lookup: Lookup, chunks: list[dict[str, Any]], cost_micros: int) -> bool:
        """Stores a whole answer (its final chunk says how it ended); False when it is not one to keep."""
        final = chunks[-1] if chunks else {}
        if lookup.key is None or lookup.ttl_s <= 0 or final.get("error") or \
                final.get("finish_reason") not in STORED_FINISHES:
            return False
        doc = {"chunks": [{k: c.get(k) for k in CHUNK_FIELDS} for c in chunks], "model": final.get("model") or "",
               "cost_micros": cost_micros, "created": time.time()}
        try:
            await self._r.set(lookup.key, json.dumps(doc), ex=lookup.ttl_s)
        except RedisError as exc:
            log.warning("cache store failed: %r", exc)
            return False
        return True
