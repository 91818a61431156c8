"""Shared test helpers for the integration tests."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import redis.asyncio as aioredis

from conflux.config import Settings
from conflux.tenants import ApiKeyStore, Tenant


async def new_tenant_key(settings: Settings, plan: str = "pro") -> tuple[str, str]:
    """A fresh tenant on `plan` and an API key for it: (tenant_id, key)."""
    r = aioredis.Redis.from_url(settings.redis_url)
    try:
        store = ApiKeyStore(r)
        tid = f"t-{uuid.uuid4().hex[:8]}"
        await store.upsert_tenant(Tenant(tid, plan))
        return tid, await store.create_key(tid)
    finally:
        await r.aclose()


def new_tenant_key_sync(settings: Settings, plan: str = "pro") -> tuple[str, str]:
    return asyncio.run(new_tenant_key(settings, plan))


def ingest_document(settings: Settings, key: str, text: str, source: str = "test.md") -> None:
    """A new document for the key's tenant, through the edge (the worker ingests it asynchronously)."""
    doc = httpx.post(f"http://127.0.0.1:{settings.edge_port}/v1/events/documents.ingest", timeout=30,
                     headers={"Authorization": f"Bearer {key}"},
                     json={"document_id": f"d-{uuid.uuid4().hex[:6]}", "source": source, "text": text})
    assert doc.status_code == 200, doc.text
