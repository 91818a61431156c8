"""kill -9 one of two edge instances: its streams end with an error at their clients, the other instance's
requests are untouched, and a new instance with the same id takes over its reply topic cleanly."""

from __future__ import annotations

import asyncio

import httpx

from conflux.config import Settings
from tests import procs
from tests.faults.helpers import expected_echo, responses_by_request, stream_chat
from tests.integration.helpers import new_tenant_key

PORT = 8182
PER_EDGE = 10
TOKENS = 60


async def test_kill_one_of_two_edges(stack: Settings) -> None:
    edge2 = procs.edge(stack, "edge-fault-2", PORT).start()
    try:
        await asyncio.to_thread(procs.wait_edge, edge2, PORT)
        _, key = await new_tenant_key(stack, "pro")
        bases = {"edge-1": f"http://127.0.0.1:{stack.edge_port}/v1", "edge-2": f"http://127.0.0.1:{PORT}/v1"}
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=64)) as http:
            # Warm: on a just-started stack the first chats take seconds, and the kill must find every stream
            # of the second edge open (one echo-paced stream lasts TOKENS x 50 ms).
            for base in bases.values():
                assert (await stream_chat(http, base, key, "warm up", max_tokens=2)).kind == "ok"
            edge2_streaming = [asyncio.Event() for _ in range(PER_EDGE)]
            tasks = {(name, i): asyncio.create_task(stream_chat(
                         http, base, key, f"edge {name} {i} one two", max_tokens=TOKENS,
                         streaming=edge2_streaming[i] if name == "edge-2" else None))
                     for name, base in bases.items() for i in range(PER_EDGE)}
            await asyncio.wait_for(asyncio.gather(*(e.wait() for e in edge2_streaming)), 30)
            await asyncio.to_thread(edge2.kill9)
            results = dict(zip(tasks, await asyncio.wait_for(asyncio.gather(*tasks.values()), 120), strict=True))

            for (name, i), o in results.items():
                if name == "edge-1":  # untouched by the other instance's death
                    assert o.kind == "ok" and o.text == expected_echo(f"edge {name} {i} one two", TOKENS), o
                else:  # the client learns at once that its stream broke; it does not wait for a timeout
                    assert o.kind == "transport" and o.seconds < 10, o

            # A new instance with the dead one's id reads its reply topic from the end: no stale chunks.
            edge2 = procs.edge(stack, "edge-fault-2", PORT).start()
            await asyncio.to_thread(procs.wait_edge, edge2, PORT)
            after = await asyncio.gather(*(stream_chat(http, bases["edge-2"], key, f"after restart {i} x",
                                                       max_tokens=12) for i in range(5)))
            for i, o in enumerate(after):
                assert o.kind == "ok" and o.text == expected_echo(f"after restart {i} x", 12), o
    finally:
        edge2.stop()

    # Every accepted request, including those whose client was cut off, ends exactly once in the record.
    ids = [o.request_id for o in [*results.values(), *after] if o.request_id]
    assert len(ids) == 2 * PER_EDGE + 5
    responses = await asyncio.to_thread(responses_by_request, stack, ids)
    assert set(responses) == set(ids)
    assert all(len(rows) == 1 for rows in responses.values()), responses
