"""Vector store behind one interface: a Weaviate server, or embedded LanceDB when none can be had.

Backend choice (CONFLUX_VECTOR_BACKEND): "weaviate", "lancedb", or "auto" = Weaviate unless `conflux up`
recorded that it could not be built here (.conflux/vector-backend), in which case LanceDB.
"""

from __future__ import annotations

from conflux.config import Settings
from conflux.vectorstore.base import Chunk, Hit, VectorStore


def _fallback_file(settings: Settings):  # type: ignore[no-untyped-def]
    return settings.home / "vector-backend"


def record_fallback(settings: Settings, reason: str | None) -> None:
    """Remembers (reason given) or forgets (None) that Weaviate is unavailable on this machine."""
    path = _fallback_file(settings)
    if reason is None:
        path.unlink(missing_ok=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"lancedb\n{reason}\n")


def resolve_vector_backend(settings: Settings) -> str:
    if settings.vector_backend != "auto":
        return settings.vector_backend
    path = _fallback_file(settings)
    return "lancedb" if path.exists() and path.read_text().startswith("lancedb") else "weaviate"


def open_vector_store(settings: Settings) -> VectorStore:
    if resolve_vector_backend(settings) == "weaviate":
        from conflux.vectorstore.weaviate_store import WeaviateStore

        return WeaviateStore.connect(settings.weaviate_url, settings.weaviate_grpc_port, settings.weaviate_api_key)
    from conflux.vectorstore.lance_store import LanceStore

    return LanceStore(settings.lancedb_path)


__all__ = ["Chunk", "Hit", "VectorStore", "open_vector_store", "record_fallback", "resolve_vector_backend"]
