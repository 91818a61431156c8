"""Retrieval skips the vector store for a tenant without documents (streams/documents.py), and only then."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from conflux.errors import VectorStoreError
from conflux.vectorstore.base import Hit
from streams import retrieval
from streams.documents import DocumentPresence


class FakeStore:
    backend = "fake"

    def __init__(self, counts: dict[str, int], fail: bool = False) -> None:
        self.counts = counts
        self.fail = fail
        self.count_calls: list[str] = []
        self.searches: list[str] = []

    def count(self, collection: str, tenant_id: str) -> int:
        self.count_calls.append(tenant_id)
        if self.fail:
            raise VectorStoreError("store away")
        return self.counts.get(tenant_id, 0)

    def search(self, collection: str, tenant_id: str, vector: Any, k: int) -> list[Hit]:
        self.searches.append(tenant_id)
        return [Hit("d#0", "d", "text", "", 0.9)] if self.counts.get(tenant_id) else []


def test_a_tenant_record_with_docs_version_is_always_searched_without_asking_the_store() -> None:
    store = FakeStore({})
    presence = DocumentPresence(store, "documents")  # type: ignore[arg-type]
    assert asyncio.run(presence.has_documents("t1", b"3")) is True
    assert store.count_calls == []


def test_a_record_without_the_field_is_asked_once_and_the_answer_kept() -> None:
    store = FakeStore({"legacy": 5})  # chunks written before docs_version existed

    async def run() -> list[bool]:
        presence = DocumentPresence(store, "documents")  # type: ignore[arg-type]
        return [await presence.has_documents(t, None) for t in ("empty", "empty", "legacy", "legacy")]

    assert asyncio.run(run()) == [False, False, True, True]
    assert store.count_calls == ["empty", "legacy"]


def test_an_ingest_after_a_no_is_seen_through_the_field() -> None:
    store = FakeStore({})

    async def run() -> tuple[bool, bool]:
        presence = DocumentPresence(store, "documents")  # type: ignore[arg-type]
        before = await presence.has_documents("t1", None)
        store.counts["t1"] = 2  # ingest bumps docs_version before it writes the first chunk
        return before, await presence.has_documents("t1", b"1")

    assert asyncio.run(run()) == (False, True)


def test_a_store_error_means_search_and_is_not_remembered() -> None:
    store = FakeStore({}, fail=True)

    async def run() -> list[bool]:
        presence = DocumentPresence(store, "documents")  # type: ignore[arg-type]
        return [await presence.has_documents("t1", None) for _ in range(2)]

    assert asyncio.run(run()) == [True, True]
    assert store.count_calls == ["t1", "t1"]


def test_memory_is_bounded() -> None:
    store = FakeStore({})

    async def run() -> DocumentPresence:
        presence = DocumentPresence(store, "documents", capacity=3)  # type: ignore[arg-type]
        for i in range(10):
            await presence.has_documents(f"t{i}", None)
        return presence

    assert len(asyncio.run(run())._known) == 3


class FakeEvents:
    def __init__(self) -> None:
        self.added: list[tuple[str, dict[str, Any]]] = []

    async def add(self, topic: str, record: dict[str, Any], key: str | None = None) -> None:
        self.added.append((topic, record))


def _retrieve(store: FakeStore, tenant: str, docs_version: bytes | None) -> tuple[list[dict[str, Any]], Any]:
    metrics = SimpleNamespace(counts={})
    metrics.inc = lambda name, value=1, **_: metrics.counts.__setitem__(name, metrics.counts.get(name, 0) + value)

    async def embedding(_: Any) -> list[float]:
        return [0.0] * 384

    deps = SimpleNamespace(vectors=store, documents=DocumentPresence(store, "documents"),  # type: ignore[arg-type]
                           triton=None, collection="documents", retrieval_k=4, retrieval_min_score=0.25,
                           metrics=metrics, envelope=lambda env: env)
    events = FakeEvents()
    rc = SimpleNamespace(newest_user_message="what is the policy?", docs_version=docs_version, events=events,
                         env={"tenant_id": tenant}, key="c1",
                         embedding=lambda triton: asyncio.ensure_future(embedding(triton)))
    chunks = asyncio.run(retrieval.retrieve(deps, rc))  # type: ignore[arg-type]
    assert [t for t, _ in events.added] == ["retrieval.completed"]  # recorded whether searched or not
    return chunks, metrics.counts


def test_retrieval_skips_the_search_for_a_tenant_without_documents() -> None:
    store = FakeStore({"docs": 1})
    chunks, counts = _retrieve(store, "nodocs", None)
    assert chunks == [] and store.searches == [] and counts == {"retrieval_skipped_total": 1}


def test_retrieval_searches_a_tenant_with_documents() -> None:
    store = FakeStore({"docs": 1})
    chunks, counts = _retrieve(store, "docs", b"1")
    assert [c["chunk_id"] for c in chunks] == ["d#0"] and store.searches == ["docs"]
    assert "retrieval_skipped_total" not in counts
    chunks, _ = _retrieve(store, "docs", None)  # written before the field existed: still found
    assert [c["chunk_id"] for c in chunks] == ["d#0"]
