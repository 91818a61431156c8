"""Embedded LanceDB backend: the fallback where no Weaviate server can be had. One table per collection."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conflux.errors import VectorStoreError
from conflux.vectorstore.base import Chunk, Hit, check_collection, check_tenant


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class LanceStore:
    backend = "lancedb"

    def __init__(self, path: Path) -> None:
        import lancedb

        path.mkdir(parents=True, exist_ok=True)
        self._db = lancedb.connect(str(path))

    def _table(self, collection: str) -> Any:
        try:
            return self._db.open_table(check_collection(collection))
        except (FileNotFoundError, ValueError) as exc:
            raise VectorStoreError(f"collection {collection!r} does not exist") from exc

    def ensure_collection(self, collection: str, dim: int) -> None:
        import pyarrow as pa

        name = check_collection(collection)
        schema = pa.schema([
            ("chunk_id", pa.string()), ("document_id", pa.string()), ("tenant_id", pa.string()),
            ("text", pa.string()), ("source", pa.string()), ("vector", pa.list_(pa.float32(), dim)),
        ])
        self._db.create_table(name, schema=schema, exist_ok=True)

    def upsert(self, collection: str, chunks: Sequence[Chunk]) -> int:
        if not chunks:
            return 0
        rows = [{"chunk_id": f"{check_tenant(c.tenant_id)}/{c.chunk_id}", "document_id": c.document_id,
                 "tenant_id": c.tenant_id, "text": c.text, "source": c.source,
                 "vector": [float(x) for x in c.vector]} for c in chunks]
        (self._table(collection).merge_insert("chunk_id").when_matched_update_all()
         .when_not_matched_insert_all().execute(rows))
        return len(rows)

    def search(self, collection: str, tenant_id: str, vector: Sequence[float], k: int) -> list[Hit]:
        rows = (self._table(collection).search([float(x) for x in vector]).metric("cosine")
                .where(f"tenant_id = {_quote(check_tenant(tenant_id))}", prefilter=True).limit(k).to_list())
        return [Hit(r["chunk_id"].split("/", 1)[1], r["document_id"], r["text"], r["source"],
                    1.0 - float(r["_distance"])) for r in rows]

    def count(self, collection: str, tenant_id: str) -> int:
        return int(self._table(collection).count_rows(f"tenant_id = {_quote(check_tenant(tenant_id))}"))

    def delete_document(self, collection: str, tenant_id: str, document_id: str) -> None:
        self._table(collection).delete(
            f"tenant_id = {_quote(check_tenant(tenant_id))} AND document_id = {_quote(document_id)}")

    def drop_collection(self, collection: str) -> None:
        name = check_collection(collection)
        with contextlib.suppress(ValueError, FileNotFoundError):  # already gone: dropping is idempotent
            self._db.drop_table(name)

    def close(self) -> None:
        """Nothing to release: LanceDB holds no server connection."""
