"""The vector store contract. Every search is scoped to one tenant: isolation is not optional."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from conflux.errors import VectorStoreError

_COLLECTION = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_TENANT = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


@dataclass(frozen=True)
class Chunk:
    chunk_id: str
    document_id: str
    tenant_id: str
    text: str
    vector: Sequence[float]
    source: str = ""


@dataclass(frozen=True)
class Hit:
    chunk_id: str
    document_id: str
    text: str
    source: str
    score: float  # cosine similarity, higher is closer


def check_collection(name: str) -> str:
    if not _COLLECTION.match(name):
        raise VectorStoreError(f"collection name {name!r} must match {_COLLECTION.pattern}")
    return name


def check_tenant(tenant_id: str) -> str:
    if not _TENANT.match(tenant_id):
        raise VectorStoreError(f"tenant id {tenant_id!r} must match {_TENANT.pattern}")
    return tenant_id


class VectorStore(Protocol):
    backend: str

    def ensure_collection(self, collection: str, dim: int) -> None: ...

    def upsert(self, collection: str, chunks: Sequence[Chunk]) -> int:
        """Writes chunks; the same chunk_id written twice leaves one object."""
        ...

    def search(self, collection: str, tenant_id: str, vector: Sequence[float], k: int) -> list[Hit]: ...

    def count(self, collection: str, tenant_id: str) -> int: ...

    def delete_document(self, collection: str, tenant_id: str, document_id: str) -> None: ...

    def drop_collection(self, collection: str) -> None: ...

    def close(self) -> None: ...
