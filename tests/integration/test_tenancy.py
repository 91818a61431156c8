"""API keys (hashed at rest) and per-tenant rate limits, on the real Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from conflux.config import Settings
from conflux.ratelimit import RateLimiter
from conflux.tenants import ApiKeyStore, AuthError, Tenant, hash_key


@pytest.fixture
async def r(stack: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(stack.redis_url)
    yield client
    await client.aclose()


async def test_keys_are_stored_hashed_and_resolve_to_their_tenant(r: aioredis.Redis) -> None:
    store = ApiKeyStore(r)
    tid = f"t-{uuid.uuid4().hex[:8]}"
    await store.upsert_tenant(Tenant(tid, "pro", "Be concise."))
    key = await store.create_key(tid)
    stored = [k async for k in r.scan_iter("conflux:apikey:*")]
    assert f"conflux:apikey:{hash_key(key)}".encode() in stored
    for k in stored:  # the key itself is nowhere in Redis
        values = [v if isinstance(v, bytes) else v.encode() for v in (await r.hgetall(k)).values()]
        assert key.encode() not in k and key.encode() not in b"".join(values)
    tenant = await store.authenticate(key)
    assert (tenant.tenant_id, tenant.plan, tenant.system_prompt) == (tid, "pro", "Be concise.")
    assert tenant.key_id == "key_" + hash_key(key)[:12]
    await store.revoke(key)
    with pytest.raises(AuthError, match="invalid"):
        await store.authenticate(key)


@pytest.mark.parametrize(("key", "message"), [(None, "missing"), ("", "missing"), ("sk-abc", "malformed"),
                                               ("cfx_" + "x" * 43, "invalid")])
async def test_bad_keys_are_refused_with_a_reason(r: aioredis.Redis, key: str | None, message: str) -> None:
    with pytest.raises(AuthError, match=message):
        await ApiKeyStore(r).authenticate(key)


async def test_request_limit_refuses_with_retry_after(r: aioredis.Redis) -> None:
    limiter = RateLimiter(r)
    tid = f"rl-{uuid.uuid4().hex[:8]}"
    verdicts = [await limiter.acquire(tid, 10, requests_per_minute=5, tokens_per_minute=10_000) for _ in range(7)]
    assert [v.allowed for v in verdicts] == [True] * 5 + [False] * 2
    assert 1 <= verdicts[-1].retry_after_s <= 12  # one request refills in 60/5 = 12 s


async def test_token_limit_counts_tokens_and_refusals_take_nothing(r: aioredis.Redis) -> None:
    limiter = RateLimiter(r)
    tid = f"rl-{uuid.uuid4().hex[:8]}"
    assert (await limiter.acquire(tid, 900, 100, 1000)).allowed
    refused = await limiter.acquire(tid, 200, 100, 1000)
    assert not refused.allowed and refused.retry_after_s >= 1
    assert (await limiter.acquire(tid, 90, 100, 1000)).allowed  # the refusal did not consume the budget
    too_big = await limiter.acquire(tid, 5000, 100, 1000)
    assert not too_big.allowed and too_big.retry_after_s == -1


async def test_tenants_have_separate_budgets(r: aioredis.Redis) -> None:
    limiter = RateLimiter(r)
    a, b = f"rl-{uuid.uuid4().hex[:8]}", f"rl-{uuid.uuid4().hex[:8]}"
    assert (await limiter.acquire(a, 1, 1, 100)).allowed
    assert not (await limiter.acquire(a, 1, 1, 100)).allowed
    assert (await limiter.acquire(b, 1, 1, 100)).allowed


async def test_keys_are_listed_revoked_and_rotated_by_id_within_their_tenant(r: aioredis.Redis) -> None:
    store = ApiKeyStore(r)
    mine, theirs = f"t-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    for tid in (mine, theirs):
        await store.upsert_tenant(Tenant(tid, "free"))
    first, second = await store.create_key(mine, "ci"), await store.create_key(mine, "laptop")
    other = await store.create_key(theirs, "ci")
    listed = await store.list_keys(mine)
    assert sorted(k.name for k in listed) == ["ci", "laptop"]
    assert all(k.id.startswith("key_") and first not in k.id for k in listed)
    by_name = {k.name: k.id for k in listed}
    other_id = (await store.list_keys(theirs))[0].id
    with pytest.raises(AuthError, match="has no key"):  # another tenant's key cannot be named
        await store.revoke_id(mine, other_id)
    await store.authenticate(other)

    await store.revoke_id(mine, by_name["laptop"])
    with pytest.raises(AuthError, match="invalid"):
        await store.authenticate(second)
    rotated = await store.rotate(mine, by_name["ci"])
    with pytest.raises(AuthError, match="invalid"):
        await store.authenticate(first)
    assert (await store.authenticate(rotated)).tenant_id == mine
    assert [k.name for k in await store.list_keys(mine)] == ["ci"]
