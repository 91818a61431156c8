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


def _class_name(collection: str) -> str:
    return check_collection(collection).capitalize()  # Weaviate class names start with a capital


class WeaviateStore:
    backend = "weaviate"

    def __init__(self, client: Any) -> None:
        self._client = client

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
        text = wvc.config.DataType.TEXT
        self._client.collections.create(
            name,
            vector_config=wvc.config.Configure.Vectors.self_provided(
                vector_index_config=wvc.config.Configure.VectorIndex.hnsw(
                    distance_metric=wvc.config.VectorDistances.COSINE)),
            properties=[
                wvc.config.Property(name="chunk_id", data_type=text),
                wvc.config.Property(name="document_id", data_type=text),
                wvc.config.Property(name="tenant_id", data_type=text, skip_vectorization=True),
                wvc.config.Property(name="text", data_type=text),
                wvc.config.Property(name="source", data_type=text),
            ],
        )

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

        col = self._client.collections.get(_class_name(collection))
        res = col.query.near_vector(
            near_vector=[float(x) for x in vector], limit=k,
            filters=wvc.query.Filter.by_property("tenant_id").equal(check_tenant(tenant_id)),
            return_metadata=wvc.query.MetadataQuery(distance=True),
        )
        return [
            Hit(o.properties["chunk_id"], o.properties["document_id"], o.properties["text"],
                o.properties.get("source") or "", 1.0 - float(o.metadata.distance or 0.0))
            for o in res.objects
        ]

    def count(self, collection: str, tenant_id: str) -> int:
        import weaviate.classes as wvc

        col = self._client.collections.get(_class_name(collection))
        agg = col.aggregate.over_all(
            filters=wvc.query.Filter.by_property("tenant_id").equal(check_tenant(tenant_id)), total_count=True)
        return int(agg.total_count or 0)

    def delete_document(self, collection: str, tenant_id: str, document_id: str) -> None:
        import weaviate.classes as wvc

        col = self._client.collections.get(_class_name(collection))
        f = wvc.query.Filter
        col.data.delete_many(where=f.by_property("tenant_id").equal(check_tenant(tenant_id))
                             & f.by_property("document_id").equal(document_id))

    def drop_collection(self, collection: str) -> None:
        self._client.collections.delete(_class_name(collection))

    def close(self) -> None:
        self._client.close()
