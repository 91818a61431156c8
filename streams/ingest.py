"""Document ingestion: documents.ingest -> chunks -> MiniLM embeddings (Triton) -> the tenant's vector store.

Re-ingesting a document replaces its chunks (the topic is compacted: the latest version wins)."""

from __future__ import annotations

import re
from typing import Any

from conflux.vectorstore import Chunk
from streams.deps import Deps

SOURCE = "documents.ingest"
EVENT = "document_ingested"
CHUNK_CHARS = 800
OVERLAP_CHARS = 120
EMBED_BATCH = 32


def chunk_text(text: str, size: int = CHUNK_CHARS, overlap: int = OVERLAP_CHARS) -> list[str]:
    """Paragraph-aware chunks of about `size` characters; long paragraphs are split with overlap."""
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    chunks: list[str] = []
    current = ""
    for para in paragraphs:
        while len(para) > size:
            cut = para.rfind(" ", 0, size)
            cut = cut if cut > size // 2 else size
            if current:
                chunks.append(current)
                current = ""
            chunks.append(para[:cut].strip())
            para = para[max(0, cut - overlap):].strip()
        if current and len(current) + len(para) + 2 > size:
            chunks.append(current)
            current = para
        else:
            current = f"{current}\n\n{para}" if current else para
    if current:
        chunks.append(current)
    return chunks


async def handle(deps: Deps, doc: dict[str, Any]) -> None:
    if deps.vectors is None:
        return
    env = doc["envelope"]
    pieces = chunk_text(doc["text"])
    await _documents_changed(deps, env["tenant_id"])
    deps.vectors.delete_document(deps.collection, env["tenant_id"], doc["document_id"])
    for start in range(0, len(pieces), EMBED_BATCH):
        batch = pieces[start:start + EMBED_BATCH]
        vectors = await deps.triton.embed(batch)
        deps.vectors.upsert(deps.collection, [
            Chunk(f"{doc['document_id']}#{start + i}", doc["document_id"], env["tenant_id"], text, vec.tolist(),
                  doc["source"]) for i, (text, vec) in enumerate(zip(batch, vectors, strict=True))])
    await _documents_changed(deps, env["tenant_id"])


async def _documents_changed(deps: Deps, tenant_id: str) -> None:
    """A new documents version of the tenant (part of the response cache's key, edge/cache.py): bumped before
    the old chunks go and again once the new ones are in, so no answer cached in between outlives them. Only
    for a tenant that exists: a field alone would make a tenant record without a plan."""
    key = f"conflux:tenant:{tenant_id}"
    if await deps.redis.exists(key):
        await deps.redis.hincrby(key, "docs_version", 1)
