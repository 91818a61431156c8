"""Whether a tenant has documents to search, so that retrieval skips the vector store for tenants that have none
(most chats: a query costs the worker a thread hop and a gRPC call, and the store a filtered vector search, for
nothing).

The answer comes from the tenant record the pipeline reads anyway: ingest bumps its `docs_version` field before
a document's first chunk is written (streams/ingest.py), so a record with the field may have documents and is
always searched. A record without it is asked of the store once (chunks written before the field existed), and
that answer is kept in a bounded in-memory map: it can only go stale by an ingest, which adds the field.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from conflux.errors import VectorStoreError
from conflux.vectorstore import VectorStore

CAPACITY = 10_000  # tenants remembered per worker process (a bool each)


class DocumentPresence:
    def __init__(self, vectors: VectorStore, collection: str, capacity: int = CAPACITY) -> None:
        self._vectors = vectors
        self._collection = collection
        self._capacity = capacity
        self._known: OrderedDict[str, bool] = OrderedDict()

    async def has_documents(self, tenant_id: str, docs_version: bytes | None) -> bool:
        if docs_version is not None:
            return True
        if (known := self._known.get(tenant_id)) is not None:
            self._known.move_to_end(tenant_id)
            return known
        try:
            # The store's client is synchronous: off the event loop, like every store call of the worker.
            found = await asyncio.to_thread(self._vectors.count, self._collection, tenant_id) > 0
        except VectorStoreError:
            return True  # not known (the store is away, an id it refuses): search as before, and ask again later
        self._known[tenant_id] = found
        if len(self._known) > self._capacity:
            self._known.popitem(last=False)
        return found
