"""Retrieval: the top-k chunks of the tenant's documents for the latest user message."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conflux.errors import VectorStoreError
from conflux.safety import check_rules
from streams.deps import Deps
from streams.request import RequestContext


async def retrieve(deps: Deps, rc: RequestContext) -> list[dict[str, Any]]:
    """The chunks that go into the prompt, recorded on retrieval.completed: the top k of the tenant's documents
    that are related to the question (deps.retrieval_min_score)."""
    t0 = time.perf_counter()
    query = rc.newest_user_message
    chunks: list[dict[str, Any]] = []
    if deps.vectors is not None and query and await _has_documents(deps, rc):
        vec = [float(x) for x in await rc.embedding(deps.triton)]
        try:
            # The vector store clients are synchronous: keep them off the event loop every request shares.
            hits = await asyncio.to_thread(deps.vectors.search, deps.collection, rc.env["tenant_id"], vec,
                                           deps.retrieval_k)
        except VectorStoreError:
            hits = []  # the tenant has no documents yet (no collection): answer without context
        chunks = [{"document_id": h.document_id, "chunk_id": h.chunk_id, "text": h.text, "score": h.score,
                   "source": h.source or None} for h in hits if h.score >= deps.retrieval_min_score]
        if unrelated := len(hits) - len(chunks):
            deps.metrics.inc("retrieval_unrelated_total", unrelated,
                             help_text="retrieved chunks left out as unrelated to the question")
        chunks = await _drop_injected(deps, rc, chunks)
    await rc.events.add("retrieval.completed", {
        "envelope": deps.envelope(rc.env), "query": query, "collection": deps.collection, "chunks": chunks,
        "latency_ms": (time.perf_counter() - t0) * 1000}, key=rc.key)
    return chunks


async def _has_documents(deps: Deps, rc: RequestContext) -> bool:
    if deps.documents is None or await deps.documents.has_documents(rc.env["tenant_id"], rc.docs_version):
        return True
    deps.metrics.inc("retrieval_skipped_total", help_text="retrievals that skipped the vector store: the tenant "
                     "has no documents")
    return False


async def _drop_injected(deps: Deps, rc: RequestContext, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Retrieved text is data, never instructions: a chunk carrying an injection attempt is left out of the
    prompt, and a RETRIEVAL verdict records which chunk and why. The request itself goes on."""
    t0 = time.perf_counter()
    flagged = {c["chunk_id"]: check_rules(c["text"]) for c in chunks}
    flagged = {cid: r for cid, r in flagged.items() if r.attack}
    if not flagged:
        return chunks
    await rc.events.add("safety.verdicts", {
        "envelope": deps.envelope(rc.env), "stage": "RETRIEVAL", "verdict": "FLAG", "categories": ["prompt_injection"],
        "reasons": [f"{cid}: {', '.join(r.reasons)}" for cid, r in flagged.items()], "score": None,
        "checker": "rules", "latency_ms": (time.perf_counter() - t0) * 1000}, key=rc.key)
    return [c for c in chunks if c["chunk_id"] not in flagged]
