"""Shared test helpers for the integration tests."""

from __future__ import annotations

import asyncio
import uuid

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
