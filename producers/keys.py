"""The benchmarks' own tenant (plan enterprise), so load is not cut by the dev tenant's rate limits."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from conflux.config import Settings
from conflux.tenants import ApiKeyStore, AuthError, Tenant


def bench_key(settings: Settings) -> str:
    path = settings.home / "bench-api-key"

    async def ensure() -> str:
        r = aioredis.Redis.from_url(settings.redis_url)
        try:
            store = ApiKeyStore(r)
            if path.exists():
                try:
                    await store.authenticate(path.read_text().strip())
                    return path.read_text().strip()
                except AuthError:
                    pass
            await store.upsert_tenant(Tenant("bench", "enterprise"))
            key = await store.create_key("bench", name="bench")
            path.write_text(key + "\n")
            path.chmod(0o600)
            return key
        finally:
            await r.aclose()

    return asyncio.run(ensure())
