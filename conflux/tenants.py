"""Tenants and API keys, in Redis. Keys are random 256-bit tokens shown once; only their SHA-256 is stored.

SHA-256 (not a slow password hash) is right here: the keys are high-entropy random, so there is nothing to
brute-force, and the edge must verify one on every request.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from conflux.budget import Budget
from conflux.errors import ConfluxError

KEY_PREFIX = "cfx_"
_TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class AuthError(ConfluxError):
    """Missing, malformed, unknown or revoked API key."""


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    plan: str
    system_prompt: str = ""
    key_id: str = ""  # the key this request came with (key_<12 hex>); empty for a tenant not authenticated
    budget: Budget | None = None  # the tenant's spend budget
    key_budget: Budget | None = None  # the key's own
    # What of the tenant shapes a cached answer besides the request (system prompt, safety policy, documents
    # version): part of the cache key (edge/cache.py). And its cache TTL: None the platform's, 0 off.
    cache_salt: str = ""
    cache_ttl_s: int | None = None
    semantic_threshold: float | None = None  # the semantic cache's: None the platform's, 0 off
    safety_policy: str | None = None  # as stored (taxonomy.tenant_policy reads it): the edge judges a semantic hit
    fetch_allow: tuple[str, ...] = ()  # hosts the fetch_url tool may read for this tenant (".example.com": subdomains)
    server_tools: tuple[str, ...] = ()  # built-in tools a chat of this tenant gets when it names none itself

    @property
    def spend_scopes(self) -> list[tuple[str, Budget | None]]:
        """(scope, budget) of the tenant and of its key: where this request's spend is counted and limited."""
        scopes: list[tuple[str, Budget | None]] = [(f"tenant:{self.tenant_id}", self.budget)]
        if self.key_id:
            scopes.append((f"key:{self.tenant_id}:{self.key_id}", self.key_budget))
        return scopes


KEY_ID_PREFIX = "key_"
# A fetch_url allow-list entry: a DNS name, optionally with a leading dot for its subdomains.
HOST = re.compile(r"\.?(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)+")
KEY_ID_CHARS = 12  # hex digits of the hash: 48 bits, unique enough among one tenant's keys to name one


@dataclass(frozen=True)
class KeyInfo:
    id: str
    name: str
    created: int  # unix seconds


def hash_key(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


class ApiKeyStore:
    """Redis layout: conflux:apikey:<sha256> -> hash {tenant_id, name, created}; conflux:tenant:<id> -> hash."""

    def __init__(self, redis: Any) -> None:
        self._r = redis  # a redis.asyncio.Redis

    async def upsert_tenant(self, tenant: Tenant) -> None:
        if not _TENANT_ID.match(tenant.tenant_id):
            raise AuthError(f"tenant id {tenant.tenant_id!r} must match {_TENANT_ID.pattern}")
        await self._r.hset(f"conflux:tenant:{tenant.tenant_id}",
                           mapping={"plan": tenant.plan, "system_prompt": tenant.system_prompt})

    async def set_policy(self, tenant_id: str, overrides: dict[str, str]) -> dict[str, str]:
        """Stores the tenant's safety policy overrides (category -> block|flag|allow), merged over what it had;
        refused whole if any entry names an unknown category or action or loosens a locked category. Returns
        the stored overrides. The workers read it with the plan on every request: no restart."""
        from conflux import taxonomy

        key = f"conflux:tenant:{tenant_id}"
        if not await self._r.exists(key):
            raise AuthError(f"unknown tenant {tenant_id!r}")
        tax = taxonomy.load()
        for cid, action in overrides.items():
            tax.check_override(cid, action)
        merged = {**taxonomy.parse_overrides(await self._r.hget(key, "safety_policy")), **overrides}
        # An override equal to the taxonomy's default is dropped, so a later change of the default applies.
        merged = {c: a for c, a in merged.items() if a != tax.categories[c].action}
        await self._r.hset(key, "safety_policy", json.dumps(merged, sort_keys=True))
        return merged

    async def create_key(self, tenant_id: str, name: str = "default", budget: Budget | None = None) -> str:
        """Returns the new key. It is not stored anywhere, so this is the only time it can be seen."""
        if not await self._r.exists(f"conflux:tenant:{tenant_id}"):
            raise AuthError(f"unknown tenant {tenant_id!r}")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = {"tenant_id": tenant_id, "name": name, "created": str(int(time.time()))}
        if budget is not None:
            record["budget"] = budget.to_json()
        await self._r.hset(f"conflux:apikey:{hash_key(key)}", mapping=record)
        return key

    async def set_budget(self, tenant_id: str, budget: Budget | None, key_id: str | None = None) -> None:
        """The tenant's budget, or one key's (key_id); None removes it. Read on every request: no restart."""
        if key_id is not None:
            _, digest = await self._find(tenant_id, key_id)
            rkey = f"conflux:apikey:{digest}"
        elif await self._r.exists(f"conflux:tenant:{tenant_id}"):
            rkey = f"conflux:tenant:{tenant_id}"
        else:
            raise AuthError(f"unknown tenant {tenant_id!r}")
        if budget is None:
            await self._r.hdel(rkey, "budget")
        else:
            await self._r.hset(rkey, "budget", budget.to_json())

    async def revoke(self, api_key: str) -> None:
        await self._r.delete(f"conflux:apikey:{hash_key(api_key)}")

    async def tenant_exists(self, tenant_id: str) -> bool:
        return bool(await self._r.exists(f"conflux:tenant:{tenant_id}"))

    async def list_keys(self, tenant_id: str) -> list[KeyInfo]:
        """The tenant's keys, oldest first, by id (a prefix of the key's hash: the key itself is not stored)."""
        found = [info async for info, _ in self._keys_of(tenant_id)]
        return sorted(found, key=lambda k: (k.created, k.id))

    async def revoke_id(self, tenant_id: str, key_id: str) -> KeyInfo:
        """Revokes the tenant's key with this id (effective on the next request: every request reads Redis)."""
        info, digest = await self._find(tenant_id, key_id)
        await self._r.delete(f"conflux:apikey:{digest}")
        return info

    async def rotate(self, tenant_id: str, key_id: str) -> str:
        """A new key with the old one's name and budget; the old one is revoked. Returns the new key (shown once)."""
        info, digest = await self._find(tenant_id, key_id)
        # The budget goes with the name; the old key's spend stays with its id (the tenant's budget spans both).
        key = await self.create_key(tenant_id, info.name,
                                    Budget.from_json(await self._r.hget(f"conflux:apikey:{digest}", "budget")))
        await self._r.delete(f"conflux:apikey:{digest}")
        return key

    async def _find(self, tenant_id: str, key_id: str) -> tuple[KeyInfo, str]:
        prefix = key_id.removeprefix(KEY_ID_PREFIX)
        if len(prefix) != KEY_ID_CHARS:
            raise AuthError(f"a key id is {KEY_ID_PREFIX} and {KEY_ID_CHARS} hex digits (see `conflux keys list`)")
        async for found in self._keys_of(tenant_id, prefix):  # another tenant's key is not found
            return found
        raise AuthError(f"tenant {tenant_id!r} has no key {key_id!r}")

    async def _keys_of(self, tenant_id: str, prefix: str = "") -> AsyncIterator[tuple[KeyInfo, str]]:
        """(KeyInfo, hash) of the tenant's keys whose hash starts with `prefix`. A scan over every key: an
        operator's command, not a request path."""
        async for rkey in self._r.scan_iter(match=f"conflux:apikey:{prefix}*", count=500):
            record = await self._r.hgetall(rkey)
            if record and _s(record[b"tenant_id"]) == tenant_id:
                digest = _s(rkey).rsplit(":", 1)[1]
                yield KeyInfo(KEY_ID_PREFIX + digest[:KEY_ID_CHARS], _s(record.get(b"name", b"")),
                              int(_s(record.get(b"created", b"0")))), digest

    async def authenticate(self, api_key: str | None) -> Tenant:
        if not api_key:
            raise AuthError("missing API key: send 'Authorization: Bearer <key>'")
        if not api_key.startswith(KEY_PREFIX) or len(api_key) > 128:
            raise AuthError("malformed API key")
        digest = hash_key(api_key)
        record = await self._r.hgetall(f"conflux:apikey:{digest}")
        # compare_digest keeps the check constant-time even though the lookup already matched.
        if not record or not hmac.compare_digest(digest, hash_key(api_key)):
            raise AuthError("invalid API key")
        tenant_id = _s(record[b"tenant_id"])
        tenant = await self._r.hgetall(f"conflux:tenant:{tenant_id}")
        if not tenant:
            raise AuthError("the tenant of this API key no longer exists")
        state = b"\x00".join(tenant.get(f, b"") for f in (b"system_prompt", b"safety_policy", b"docs_version"))
        ttl, semantic, policy = (tenant.get(f) for f in (b"cache_ttl_s", b"semantic_threshold", b"safety_policy"))
        fetch_allow = tuple(json.loads(tenant[b"fetch_allow"])) if b"fetch_allow" in tenant else ()
        server_tools = tuple(json.loads(tenant[b"server_tools"])) if b"server_tools" in tenant else ()
        return Tenant(tenant_id, _s(tenant[b"plan"]), _s(tenant.get(b"system_prompt", b"")),
                      KEY_ID_PREFIX + digest[:KEY_ID_CHARS], Budget.from_json(tenant.get(b"budget")),
                      Budget.from_json(record.get(b"budget")), hashlib.sha256(state).hexdigest()[:16],
                      None if ttl is None else int(ttl), None if semantic is None else float(semantic),
                      None if policy is None else _s(policy), fetch_allow, server_tools)

    async def set_cache_ttl(self, tenant_id: str, ttl_s: int | None) -> None:
        """The tenant's response-cache TTL in seconds (0: off; None: the platform's default)."""
        await self._set_or_clear(tenant_id, "cache_ttl_s", None if ttl_s is None else str(max(0, ttl_s)))

    async def set_semantic_threshold(self, tenant_id: str, threshold: float | None) -> None:
        """The tenant's semantic-cache similarity threshold, 0 to 1 (0: off; None: the platform's default)."""
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"a similarity threshold is from 0 (off) to 1, not {threshold}")
        await self._set_or_clear(tenant_id, "semantic_threshold", None if threshold is None else repr(threshold))

    async def set_fetch_allow(self, tenant_id: str, hosts: list[str]) -> tuple[str, ...]:
        """The hosts the fetch_url tool may read for the tenant (empty: none). Each is a host name, or
        ".example.com" for a domain and its subdomains; no schemes, paths, ports or wildcards."""
        clean = tuple(dict.fromkeys(h.strip().lower().rstrip(".") for h in hosts if h.strip()))
        for host in clean:
            if not HOST.fullmatch(host):
                raise ValueError(f"{host!r} is not a host name or .domain (no scheme, path, port or *)")
        await self._set_or_clear(tenant_id, "fetch_allow", json.dumps(list(clean)) if clean else None)
        return clean

    async def set_server_tools(self, tenant_id: str, names: list[str], known: frozenset[str]) -> tuple[str, ...]:
        """The built-in tools a chat of the tenant gets when it names none itself (empty: none). `known` is
        what the workers can run (streams.server_tools.TOOLS: the edge and the CLI pass it in)."""
        clean = tuple(dict.fromkeys(n.strip() for n in names if n.strip()))
        unknown = sorted(set(clean) - known)
        if unknown:
            raise ValueError(f"no built-in tool named {unknown[0]!r} (there are {', '.join(sorted(known))})")
        await self._set_or_clear(tenant_id, "server_tools", json.dumps(list(clean)) if clean else None)
        return clean

    async def _set_or_clear(self, tenant_id: str, field: str, value: str | None) -> None:
        key = f"conflux:tenant:{tenant_id}"
        if not await self._r.exists(key):
            raise AuthError(f"unknown tenant {tenant_id!r}")
        if value is None:
            await self._r.hdel(key, field)
        else:
            await self._r.hset(key, field, value)


def _s(v: bytes | str) -> str:
    return v.decode() if isinstance(v, bytes) else v


DEV_TENANT = Tenant("dev", "pro", "")


async def ensure_dev_key(store: ApiKeyStore, path: Any) -> str:
    """The development key of `make up`: reused while it still authenticates, replaced otherwise.

    Written with mode 0600; it is a real credential for the local stack.
    """
    from pathlib import Path

    p = Path(path)
    if p.exists():
        key = p.read_text().strip()
        try:
            await store.authenticate(key)
            return key
        except AuthError:
            pass  # Redis was wiped or the key revoked: issue a new one
    await store.upsert_tenant(DEV_TENANT)
    key = await store.create_key(DEV_TENANT.tenant_id, name="dev")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(key + "\n")
    p.chmod(0o600)
    return key
