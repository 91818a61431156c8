"""Weaviate backend (weaviate-client v4, REST + gRPC). Objects get UUIDv5(chunk_id), so writes are upserts."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from conflux.errors import VectorStoreError
from conflux.vectorstore.base import Chunk, Hit, check_collection, check_tenant

_NS = uuid.UUID("6f1c2f9e-8d1b-4a57-9a3e-3c0f1f3b9a10")
# Ids are compared whole. With Weaviate's default `word` tokenization a filter on tenant "acme" also matches
# "acme-corp" ("acme", "corp" are words of it): one tenant's retrieval would read another's chunks, and deleting
# document "d1" would delete "d1-v2". Collections made before ids were `field`-tokenized are still read
# correctly: their matches are checked whole here (_LEGACY_FETCH), at the cost of fetching more.
_LEGACY_FETCH = 10_000


def _class_name(collection: str) -> str:
    return check_collection(collection).capitalize()  # Weaviate class names start with a capital


class WeaviateStore:
    backend = "weaviate"

    def __init__(self, client: Any) -> None:
        self._client = client
        self._exact: dict[str, bool] = {}  # class name -> its id properties are field-tokenized

    @classmethod
    def connect(cls, url: str, grpc_port: int, api_key: str = "") -> WeaviateStore:
        with warnings.catch_warnings():  # authlib (a weaviate-client dependency) warns on import
            warnings.simplefilter("ignore")
            import weaviate
        from weaviate.classes.init import Auth
        from weaviate.exceptions import WeaviateBaseError

        parts = urlsplit(url)
        try:
            client = weaviate.connect_to_custom(
                http_host=parts.hostname or "127.0.0.1", http_port=parts.port or 8080,
                http_secure=parts.scheme == "https", grpc_host=parts.hostname or "127.0.0.1",
                grpc_port=grpc_port, grpc_secure=parts.scheme == "https",
                # The client's start-up checks include asking pypi.org for its latest version: a service must
                # not phone out (there may be no route at all), so readiness is checked here instead.
                skip_init_checks=True,
                auth_credentials=Auth.api_key(api_key) if api_key else None,
            )
            if not client.is_ready():
                client.close()
                raise VectorStoreError(f"Weaviate at {url} is not ready")
        except (WeaviateBaseError, OSError) as exc:
            raise VectorStoreError(f"cannot connect to Weaviate at {url}: {exc}") from exc
        return cls(client)

    def ensure_collection(self, collection: str, dim: int) -> None:
        import weaviate.classes as wvc

        name = _class_name(collection)
        if self._client.collections.exists(name):
            return
        text, whole = wvc.config.DataType.TEXT, wvc.config.Tokenization.FIELD
        self._client.collections.create(
            name,
            vector_config=wvc.config.Configure.Vectors.self_provided(
                vector_index_config=wvc.config.Configure.VectorIndex.hnsw(
                    distance_metric=wvc.config.VectorDistances.COSINE)),
            properties=[
                wvc.config.Property(name="chunk_id", data_type=text, tokenization=whole),
                wvc.config.Property(name="document_id", data_type=text, tokenization=whole),
                wvc.config.Property(name="tenant_id", data_type=text, skip_vectorization=True, tokenization=whole),
                wvc.config.Property(name="text", data_type=text),
                wvc.config.Property(name="source", data_type=text, tokenization=whole),
            ],
        )

    def _exact_ids(self, name: str) -> bool:
        """Whether the collection filters ids whole (made by this version), asked of Weaviate once."""
        if name not in self._exact:
            import weaviate.classes as wvc

            props = self._client.collections.get(name).config.get().properties
            self._exact[name] = all(p.tokenization == wvc.config.Tokenization.FIELD
                                    for p in props if p.name in ("document_id", "tenant_id"))
        return self._exact[name]

    def _legacy_matches(self, col: Any, where: Any, **exact: str) -> list[Any]:
        """Objects of a word-tokenized collection that match `where` and whose properties equal `exact` whole."""
        res = col.query.fetch_objects(filters=where, limit=_LEGACY_FETCH, return_properties=list(exact))
        return [o for o in res.objects if all(o.properties.get(k) == v for k, v in exact.items())]

    def upsert(self, collection: str, chunks: Sequence[Chunk]) -> int:
        import weaviate.classes as wvc

        col = self._client.collections.get(_class_name(collection))
        objs = [
            wvc.data.DataObject(
                uuid=uuid.uuid5(_NS, f"{check_tenant(c.tenant_id)}/{c.chunk_id}"),
                properties={"chunk_id": c.chunk_id, "document_id": c.document_id, "tenant_id": c.tenant_id,
                            "text": c.text, "source": c.source},
                vector=[float(x) for x in c.vector],
            )
            for c in chunks
        ]
        result = col.data.insert_many(objs)
        if result.has_errors:
            first = next(iter(result.errors.values()))
            raise VectorStoreError(f"weaviate rejected {len(result.errors)} of {len(objs)} objects: {first.message}")
        return len(objs)

    def search(self, collection: str, tenant_id: str, vector: Sequence[float], k: int) -> list[Hit]:
        import weaviate.classes as wvc

        name = _class_name(collection)
        col = self._client.collections.get(name)
        res = col.query.near_vector(
            near_vector=[float(x) for x in vector], limit=k if self._exact_ids(name) else k * 10,
            filters=wvc.query.Filter.by_property("tenant_id").equal(check_tenant(tenant_id)),
            return_metadata=wvc.query.MetadataQuery(distance=True),
        )
        # Checked whole also where Weaviate filtered exactly: a chunk of another tenant is never returned.
        return [
            Hit(o.properties["chunk_id"], o.properties["document_id"], o.properties["text"],
                o.properties.get("source") or "", 1.0 - float(o.metadata.distance or 0.0))
            for o in res.objects if o.properties.get("tenant_id") == tenant_id
        ][:k]

    def count(self, collection: str, tenant_id: str) -> int:
        import weaviate.classes as wvc

        name = _class_name(collection)
        if not self._client.collections.exists(name):
            return 0  # no collection: nothing written yet
        col = self._client.collections.get(name)
        where = wvc.query.Filter.by_property("tenant_id").equal(check_tenant(tenant_id))
        if not self._exact_ids(name):
            return len(self._legacy_matches(col, where, tenant_id=tenant_id))
        agg = col.aggregate.over_all(filters=where, total_count=True)
        return int(agg.total_count or 0)

    def delete_document(self, collection: str, tenant_id: str, document_id: str) -> None:
        import weaviate.classes as wvc

        name = _class_name(collection)
        col = self._client.collections.get(name)
        f = wvc.query.Filter
        where = f.by_property("tenant_id").equal(check_tenant(tenant_id)) & f.by_property("document_id").equal(
            document_id)
        if not self._exact_ids(name):
            ids = [o.uuid for o in self._legacy_matches(col, where, tenant_id=tenant_id, document_id=document_id)]
            if ids:
                col.data.delete_many(where=f.by_id().contains_any(ids))
            return
        col.data.delete_many(where=where)

    def drop_collection(self, collection: str) -> None:
        self._client.collections.delete(_class_name(collection))
        self._exact.pop(_class_name(collection), None)

    def close(self) -> None:
        self._client.close()
