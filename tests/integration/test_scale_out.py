"""Several edge instances and chain workers at once: each edge gets exactly its own requests' chunks."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest

from conflux.config import Settings
from tests import procs

EXTRA_EDGE_PORT = 8181


@pytest.fixture(scope="module")
def second_edge_and_worker(stack: Settings) -> Iterator[str]:
    edge = procs.edge(stack, "edge-test-2", EXTRA_EDGE_PORT).start()
    worker = procs.worker(stack, "worker-test-2").start()
    try:
        procs.wait_edge(edge, EXTRA_EDGE_PORT)
        procs.wait_worker(worker, "worker-test-2")
        yield f"http://127.0.0.1:{EXTRA_EDGE_PORT}/v1"
    finally:
        edge.stop()
        worker.stop()


async def _chat(http: httpx.AsyncClient, base: str, key: str, i: int) -> tuple[str, str, str]:
    words = f"stream {i} alpha beta"
    body = {"model": "echo", "stream": True, "max_tokens": 12, "messages": [{"role": "user", "content": words}]}
    text, finish = [], None
    async with http.stream("POST", f"{base}/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {key}"}) as resp:
        assert resp.status_code == 200, await resp.aread()
        rid = resp.headers["x-request-id"]
        async for line in resp.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            assert chunk["id"] == rid, "a chunk of another request reached this stream"
            for choice in chunk["choices"]:
                text.append(choice["delta"].get("content") or "")
                finish = choice["finish_reason"] or finish
    expected = " ".join((words.split() * 12)[:12])
    return "".join(text), expected, str(finish)


async def test_32_concurrent_streams_across_two_edges_and_two_workers(
        stack: Settings, second_edge_and_worker: str) -> None:
    key = (stack.home / "dev-api-key").read_text().strip()
    bases = [f"http://127.0.0.1:{stack.edge_port}/v1", second_edge_and_worker]
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        results = await asyncio.gather(*(_chat(http, bases[i % 2], key, i) for i in range(32)))
    for got, expected, finish in results:
        assert got == expected and finish == "length"
