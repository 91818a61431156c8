"""The built-in server-side tools against the real engines: search_knowledge reads only the calling tenant's
documents (Triton embeddings, the vector store), metrics_query only its rows (ClickHouse), and the fetch_url
allow-list is a tenant setting that authentication hands to the tools."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import pytest

from conflux.clickhouse import clickhouse_client
from conflux.config import Settings
from conflux.inference import embed
from conflux.redis_client import redis_client
from conflux.tenants import ApiKeyStore
from conflux.vectorstore import VectorStore, open_vector_store
from streams.server_tools import TOOLS, ToolContext, run_tool
from tests.integration.helpers import ingest_document, new_tenant_key


def _context(stack: Settings, tenant: str, vectors: VectorStore | None = None, **extra: Any) -> ToolContext:
    async def embed_one(text: str) -> list[float]:
        return [float(x) for x in (await embed(stack.triton_grpc_url, [text]))[0]]

    return ToolContext(tenant_id=tenant, vectors=vectors, embed=embed_one, **extra)


def _set_tools(tenant: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """`conflux tenants set-tools --tenant TENANT FLAGS...`, as an operator runs it."""
    return subprocess.run([sys.executable, "-m", "conflux.cli", "tenants", "set-tools", "--tenant", tenant, *flags],
                          capture_output=True, text=True, timeout=60)


async def _search(ctx: ToolContext, query: str, until: str | None = None, wait_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + wait_s
    while True:
        out = await run_tool(TOOLS["search_knowledge"], ctx, {"query": query, "k": 5})
        assert out.ok, out.content
        result: dict[str, Any] = json.loads(out.content)
        if until is None or any(until in r["text"] for r in result["results"]) or time.monotonic() > deadline:
            return result
        await asyncio.sleep(1)


async def test_search_knowledge_reads_only_the_calling_tenants_documents(stack: Settings) -> None:
    (tenant_a, key_a), (tenant_b, key_b) = await new_tenant_key(stack), await new_tenant_key(stack)
    marker = uuid.uuid4().hex[:8]
    ingest_document(stack, key_a, f"Refunds at Acme {marker} are paid within 45 days of the request.")
    ingest_document(stack, key_b, f"Refunds at Globex {marker} are never paid; store credit only.")
    vectors = open_vector_store(stack)  # one client for the test, closed at its end
    try:
        found = await _search(_context(stack, tenant_a, vectors), "how long do refunds take", until=marker)
        texts = [r["text"] for r in found["results"]]
        assert any("45 days" in t for t in texts), texts
        assert not any("Globex" in t for t in texts)  # tenant B's document, although it matches as well
        other = await _search(_context(stack, tenant_b, vectors), "how long do refunds take", until=marker)
        assert not any("Acme" in r["text"] for r in other["results"])
        nobody = await _search(_context(stack, f"t-{uuid.uuid4().hex[:8]}", vectors), "refunds")
        assert nobody["results"] == []
    finally:
        vectors.close()


async def test_metrics_query_is_scoped_to_the_tenant_and_refuses_unknown_queries(stack: Settings) -> None:
    tenant, key = await new_tenant_key(stack)
    async with httpx.AsyncClient(timeout=60) as http:
        resp = await http.post(f"http://127.0.0.1:{stack.edge_port}/v1/chat/completions",
                               headers={"Authorization": f"Bearer {key}"},
                               json={"model": "echo", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status_code == 200, resp.text
    client = clickhouse_client(stack)
    try:
        ctx = ToolContext(tenant_id=tenant, clickhouse=lambda: client)
        deadline = time.monotonic() + 60
        while True:
            out = await run_tool(TOOLS["metrics_query"], ctx, {"query": "event_counts", "minutes": 60})
            assert out.ok, out.content
            rows = json.loads(out.content)["rows"]
            if any(r["event_type"] == "response_delivered" for r in rows) or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        assert {r["event_type"] for r in rows} >= {"prompt_submitted", "response_delivered"}
        assert all(r["rows"] < 50 for r in rows)  # one chat's events, not the whole test session's
        fresh = ToolContext(tenant_id=f"t-{uuid.uuid4().hex[:8]}", clickhouse=lambda: client)
        out = await run_tool(TOOLS["metrics_query"], fresh, {"query": "event_counts", "minutes": 60})
        assert out.ok and json.loads(out.content)["rows"] == []
        for args in ({"query": "DROP TABLE events", "minutes": 5}, {"query": "event_counts", "minutes": 0},
                     {"query": "event_counts", "minutes": 5, "tenant": "someone-else"}):
            out = await run_tool(TOOLS["metrics_query"], ctx, args)
            assert not out.ok and out.error_kind == "bad_arguments", out
    finally:
        client.close()


async def test_the_fetch_allow_list_is_a_tenant_setting(stack: Settings) -> None:
    tenant, key = await new_tenant_key(stack)
    redis = redis_client(stack.redis_url)
    try:
        store = ApiKeyStore(redis)
        assert await store.set_fetch_allow(tenant, ["Docs.Example.com", ".example.org", "docs.example.com"]) == \
            ("docs.example.com", ".example.org")
        assert (await store.authenticate(key)).fetch_allow == ("docs.example.com", ".example.org")
        with pytest.raises(ValueError, match="not a host name"):
            await store.set_fetch_allow(tenant, ["http://evil.test/x"])
        await store.set_fetch_allow(tenant, [])
        assert (await store.authenticate(key)).fetch_allow == ()
    finally:
        await redis.aclose()
    ok = _set_tools(tenant, "--fetch-allow", "api.example.com")
    assert ok.returncode == 0 and "api.example.com" in ok.stderr + ok.stdout
    bad = _set_tools(tenant, "--fetch-allow", "*.example.com")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "not a host name" in bad.stderr


async def test_default_tools_are_a_tenant_setting(stack: Settings) -> None:
    tenant, key = await new_tenant_key(stack)
    redis = redis_client(stack.redis_url)
    try:
        store = ApiKeyStore(redis)
        known = frozenset(TOOLS)
        assert await store.set_server_tools(tenant, ["calculator", " search_knowledge", "calculator"], known) == \
            ("calculator", "search_knowledge")
        assert (await store.authenticate(key)).server_tools == ("calculator", "search_knowledge")
        with pytest.raises(ValueError, match="no built-in tool named 'shell'"):
            await store.set_server_tools(tenant, ["shell"], known)
        await store.set_server_tools(tenant, [], known)
        assert (await store.authenticate(key)).server_tools == ()
    finally:
        await redis.aclose()
    ok = _set_tools(tenant, "--default-tools", "calculator")
    assert ok.returncode == 0 and "default server tools for tenant" in ok.stderr + ok.stdout
    bad = _set_tools(tenant, "--default-tools", "shell")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "no built-in tool named 'shell'" in bad.stderr
    cleared = _set_tools(tenant, "--clear")
    assert cleared.returncode == 0 and "none" in cleared.stderr + cleared.stdout
