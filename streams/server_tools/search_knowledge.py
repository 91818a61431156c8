"""search_knowledge: the tenant's own documents, by meaning. The tenant comes from the request, never from the
model, and the vector store filters on it, so one tenant's agent cannot read another's documents. Chunks that
carry an injection attempt are left out (retrieved text is data, not instructions), as in the chain's retrieval."""

from __future__ import annotations

import asyncio
from typing import Any

from conflux.errors import VectorStoreError
from conflux.safety import check_rules
from streams.server_tools.base import Tool, ToolContext, ToolError

MAX_K = 8


async def _run(ctx: ToolContext, args: dict[str, Any]) -> dict[str, Any]:
    if ctx.vectors is None or ctx.embed is None:
        raise ToolError("no knowledge base is configured for this deployment")
    vector = await ctx.embed(args["query"])
    try:
        hits = await asyncio.to_thread(ctx.vectors.search, ctx.collection, ctx.tenant_id, vector,
                                       int(args.get("k", 4)))
    except VectorStoreError:
        hits = []  # the tenant has no documents yet
    results, left_out = [], 0
    for h in hits:
        if check_rules(h.text).attack:
            left_out += 1
            continue
        results.append({"document_id": h.document_id, "chunk_id": h.chunk_id, "text": h.text,
                        "score": round(float(h.score), 4), "source": h.source or None})
    return {"query": args["query"], "results": results, "left_out_as_injection": left_out}


TOOL = Tool(
    name="search_knowledge",
    description="Searches this tenant's ingested documents by meaning and returns the best matching passages, "
                "each with its document id and source, to cite.",
    parameters={"type": "object",
                "properties": {"query": {"type": "string", "minLength": 1, "maxLength": 1000},
                               "k": {"type": "integer", "minimum": 1, "maximum": MAX_K}},
                "required": ["query"], "additionalProperties": False},
    handler=_run, timeout_s=10.0)
