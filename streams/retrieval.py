"""Stage 2, retrieval: the top-k chunks of the tenant's documents for the latest user message."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conflux.errors import VectorStoreError
from conflux.safety import check_rules
from streams.deps import Deps

SOURCE = "safety.verdicts"
EVENT = "safety_verdict"


async def handle(deps: Deps, verdict: dict[str, Any]) -> None:
    if verdict["stage"] != "INPUT" or verdict["verdict"] == "BLOCK":
        return  # output verdicts and refusals are not this stage's business
    t0 = time.perf_counter()
    env = verdict["envelope"]
    ctx = await deps.ctx.get(env["request_id"], "request", "query_vec")
    request = ctx["request"]
    query = next((m["content"] for m in reversed(request["messages"]) if m["role"] == "user"), "")
    chunks: list[dict[str, Any]] = []
    if deps.vectors is not None and query:
        vec = ctx.get("query_vec") or (await deps.triton.embed([query[:2000]]))[0].tolist()
        try:
            # The vector store clients are synchronous: keep them off the event loop every agent shares.
            hits = await asyncio.to_thread(deps.vectors.search, deps.collection, env["tenant_id"], vec,
                                           deps.retrieval_k)
        except VectorStoreError:
            hits = []  # the tenant has no documents yet (no collection): answer without context
        chunks = [{"document_id": h.document_id, "chunk_id": h.chunk_id, "text": h.text, "score": h.score,
                   "source": h.source or None} for h in hits]
        chunks = await _drop_injected(deps, env, chunks)
    await deps.ctx.put(env["request_id"], chunks=chunks)
    await deps.publisher.publish("retrieval.completed", {
        "envelope": deps.envelope(env), "query": query, "collection": deps.collection, "chunks": chunks,
        "latency_ms": (time.perf_counter() - t0) * 1000}, key=env["conversation_id"])


async def _drop_injected(deps: Deps, env: dict[str, Any], chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Retrieved text is data, never instructions: a chunk carrying an injection attempt is left out of the
    prompt, and a RETRIEVAL verdict records which chunk and why. The request itself goes on."""
    t0 = time.perf_counter()
    flagged = {c["chunk_id"]: check_rules(c["text"]) for c in chunks}
    flagged = {cid: r for cid, r in flagged.items() if r.jailbreak}
    if not flagged:
        return chunks
    await deps.publisher.publish("safety.verdicts", {
        "envelope": deps.envelope(env), "stage": "RETRIEVAL", "verdict": "FLAG", "categories": ["prompt_injection"],
        "reasons": [f"{cid}: {', '.join(r.reasons)}" for cid, r in flagged.items()], "score": None,
        "checker": "rules", "latency_ms": (time.perf_counter() - t0) * 1000}, key=env["conversation_id"])
    return [c for c in chunks if c["chunk_id"] not in flagged]
