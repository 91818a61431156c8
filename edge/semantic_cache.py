"""Semantic cache, at the edge: a deterministic question that is a near-duplicate of one answered before (the
cosine similarity of their embeddings at or above the tenant's threshold) is answered from the stored answer.

It sits on the exact cache (edge/cache.py): the same requests are eligible (deterministic, no session memory,
n = 1, not opted out), and the answer it serves is the exact cache's entry of the neighbouring request. A
neighbour must share the request's *scope*: the exact key's material with the last user message left out,
so the same tenant, system prompt, safety policy, documents version (a retrieval answer never outlives its
sources), model asked for, model and safety-model versions, earlier messages and every sampling field. Only
the last user message may differ, and only by a paraphrase.

Numbers are literal: two questions that differ only in them ("what is 2 + 3", "what is 2 + 4") embed almost
alike and have different answers, while a paraphrase keeps them. So the numbers a question holds, in order,
are part of its partition too (`literals`), and questions whose numbers differ are never neighbours.
Likewise a question with a clause added ("... I should say, it is for a device recall") keeps nearly all of
its embedding and needs another answer: a neighbour must be of comparable length (`comparable`; on the
labelled pairs no paraphrase in twenty is shorter than half its question, and every such near-miss is).

The index is a vector store collection partitioned by "<tenant>:<scope>:<literals>" (the store's isolation key,
so a search never sees another tenant's or another scope's entries). It holds the embedding, the exact key
and the question's length in words, never its text. Each tenant's entries are listed in a Redis sorted set
by expiry (the exact entry's TTL): expired ones are deleted as new ones come, and a tenant keeps at most
MAX_ENTRIES.

The question still passes input safety before a semantic hit is served: its words are not those of the
question whose answer is stored. The edge judges it as the chain's input stage does (rules and the
classifier over the same embedding); anything but ALLOW goes to the chain, which records the verdict.

Threshold: `make semantic-eval` measures precision and recall on external paraphrase pairs; a wrong cached
answer is worse than a miss, so the default is set for precision.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from conflux import taxonomy
from conflux.safety_model import HEAD_CHARS, Embedder, SafetyHead, assess
from conflux.tenants import Tenant
from conflux.vectorstore import Chunk, VectorStore
from edge.cache import Entry, Lookup, ResponseCache

log = logging.getLogger("conflux.edge")
COLLECTION = "semantic_cache"
DIM = 384  # MiniLM-L6
MAX_ENTRIES = 10_000  # per tenant; the oldest go first
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
MIN_WORD_RATIO = 0.5
CANDIDATES = 4  # nearest neighbours looked at: the nearest may be of another length


def words(question: str) -> int:
    return len(question.split())


def comparable(a_words: int, b_words: int) -> bool:
    """Whether two questions are close enough in length for one to paraphrase the other."""
    return min(a_words, b_words) >= MIN_WORD_RATIO * max(a_words, b_words, 1)


def literals(question: str) -> str:
    """A digest of the numbers in the question, in order (thousands separators dropped): part of its partition."""
    numbers = [n.replace(",", "") for n in _NUMBER.findall(question)]
    return hashlib.sha256(" ".join(numbers).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class Probe:
    """A request's place in the semantic index: where to search, and the embedding of its question."""
    lookup: Lookup
    partition: str
    vector: Any
    threshold: float


@dataclass(frozen=True)
class SemanticHit:
    entry: Entry
    similarity: float
    key: str  # the exact-cache key of the neighbour whose answer is served


class SemanticCache:
    def __init__(self, *, open_store: Callable[[], VectorStore], responses: ResponseCache, embedder: Embedder,
                 head: SafetyHead, redis: Any, threshold: float) -> None:
        self._open_store = open_store  # opened on first use: the edge starts while the vector store is down
        self._store: VectorStore | None = None
        self._responses = responses
        self._embedder = embedder
        self._head = head
        self._r = redis
        self._threshold = threshold

    def threshold_for(self, tenant: Tenant) -> float:
        return self._threshold if tenant.semantic_threshold is None else tenant.semantic_threshold

    async def probe(self, tenant: Tenant, lookup: Lookup) -> Probe | None:
        """The request's probe, or None when the semantic cache does not apply (or cannot: it never fails a
        request). Costs one embedding."""
        threshold = self.threshold_for(tenant)
        if threshold <= 0 or lookup.key is None or lookup.scope is None or not lookup.question.strip():
            return None
        try:
            vector = (await self._embedder.embed([lookup.question[:HEAD_CHARS]]))[0]
        except Exception as exc:  # noqa: BLE001 - Triton down or slow: the request goes on uncached
            log.warning("semantic cache: no embedding, answering afresh: %r", exc)
            return None
        return Probe(lookup, f"{tenant.tenant_id}:{lookup.scope}:{literals(lookup.question)}", vector, threshold)

    async def find(self, tenant: Tenant, probe: Probe) -> SemanticHit | None:
        """The stored answer of the nearest question in the probe's partition, if it is near enough, still
        stored, and the new question passes input safety; else None."""
        if not probe.lookup.read:
            return None
        try:
            store = await self._store_ready()
            hits = await asyncio.to_thread(store.search, COLLECTION, probe.partition, probe.vector, CANDIDATES)
        except Exception as exc:  # noqa: BLE001 - the vector store is down: a miss, never a failed request
            log.warning("semantic cache search failed, answering afresh: %r", exc)
            return None
        size = words(probe.lookup.question)
        near = next((h for h in hits if h.score >= probe.threshold and comparable(size, _words_of(h.text))), None)
        if near is None:
            return None
        entry = await self._responses.entry(near.source)
        if entry is None:  # the answer expired before its index entry was swept
            await self._forget([(probe.partition, near.chunk_id)])
            return None
        policy = taxonomy.tenant_policy(tenant.tenant_id, tenant.safety_policy)
        try:
            verdict = await assess(self._embedder, self._head, policy, probe.lookup.question,
                                   head_vector=probe.vector)
        except Exception as exc:  # noqa: BLE001 - a long question's slices need Triton: unjudged, it goes on
            log.warning("semantic cache: question not judged, answering afresh: %r", exc)
            return None
        if verdict.verdict != "ALLOW":
            return None
        return SemanticHit(entry, round(float(near.score), 4), near.source)

    async def remember(self, tenant: Tenant, probe: Probe) -> None:
        """Indexes the probe's question once the exact cache stored its answer; sweeps the tenant's expired
        entries. Failures are logged: a question not indexed is only a later miss."""
        lookup = probe.lookup
        assert lookup.key is not None
        entry_id = lookup.key.rsplit(":", 1)[-1][:32]
        index = f"conflux:semcache:{tenant.tenant_id}"
        try:
            store = await self._store_ready()
            await asyncio.to_thread(store.upsert, COLLECTION, [Chunk(
                chunk_id=entry_id, document_id=entry_id, tenant_id=probe.partition,
                text=f"words={words(lookup.question)}",
                vector=[float(x) for x in probe.vector], source=lookup.key)])
            now = time.time()
            async with self._r.pipeline(transaction=False) as pipe:  # one round trip
                pipe.zadd(index, {f"{probe.partition} {entry_id}": now + lookup.ttl_s})
                pipe.zrangebyscore(index, "-inf", now)
                pipe.zcard(index)
                _, expired, count = await pipe.execute()
            surplus = max(0, count - MAX_ENTRIES)
            oldest = await self._r.zrange(index, 0, surplus - 1) if surplus else []
            gone = list({*expired, *oldest})
            if gone:
                await self._forget([(p, e) for p, e in (_s(m).split(" ", 1) for m in gone)])
                await self._r.zrem(index, *gone)
        except Exception as exc:  # noqa: BLE001 - Redis or the vector store: a question not indexed is a miss
            log.warning("semantic cache: question not indexed: %r", exc)

    async def _forget(self, entries: list[tuple[str, str]]) -> None:
        try:
            store = await self._store_ready()
            for partition, entry_id in entries:
                await asyncio.to_thread(store.delete_document, COLLECTION, partition, entry_id)
        except Exception as exc:  # noqa: BLE001
            log.warning("semantic cache: stale entries not deleted: %r", exc)

    async def _store_ready(self) -> VectorStore:
        if self._store is None:
            store = await asyncio.to_thread(self._open_store)
            await asyncio.to_thread(store.ensure_collection, COLLECTION, DIM)
            self._store = store
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _words_of(stored: str) -> int:
    return int(stored.removeprefix("words=") or 0) if stored.startswith("words=") else 0


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v

