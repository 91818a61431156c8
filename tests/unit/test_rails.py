"""The gate of parallel rails (streams/request.py): an answer made beside a pending input verdict keeps its events
and its output until the verdict allows the request, and shares the request's one embedding."""

from __future__ import annotations

import asyncio
from typing import Any

from conflux.kafka import PendingEvents
from conflux.taxonomy import tenant_policy
from streams.request import RequestContext, gated


class _Publisher:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def enqueue(self, topic: str, record: dict[str, Any], key: str | None = None) -> asyncio.Future[Any]:
        await asyncio.sleep(0)  # a real enqueue yields: an event added meanwhile must not overtake or be lost
        self.sent.append((topic, record["n"]))
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class _Triton:
    def __init__(self) -> None:
        self.calls = 0

    async def embed(self, texts: list[str]) -> list[list[float]]:
        self.calls += 1
        await asyncio.sleep(0)
        return [[1.0] * 4 for _ in texts]


def _context(publisher: _Publisher) -> RequestContext:
    return RequestContext(request={"messages": [{"role": "user", "content": "hello"}],
                                   "envelope": {"request_id": "r1", "conversation_id": "c1"}},
                          plan="free", system_prompt="", started=0.0, events=PendingEvents(publisher),  # type: ignore[arg-type]
                          policy=tenant_policy("t1", None))


async def test_the_gated_view_shares_the_requests_one_embedding() -> None:
    rc = _context(_Publisher())
    early, _ = gated(rc)
    triton = _Triton()
    first, second = await asyncio.gather(rc.embedding(triton), early.embedding(triton))  # type: ignore[arg-type]
    assert triton.calls == 1 and first == second


async def test_events_wait_for_the_verdict_then_go_in_order_and_later_ones_pass_straight_through() -> None:
    publisher = _Publisher()
    rc = _context(publisher)
    early, gate = gated(rc)
    await early.events.add("retrieval.results", {"n": "1"})
    await early.events.add("routing.decisions", {"n": "2"})
    opened = asyncio.create_task(early.events.wait_open())
    await asyncio.sleep(0.01)
    assert publisher.sent == [] and not opened.done()  # nothing leaves, no chunk may go, before the verdict

    async def late() -> None:  # the answer keeps going while the held events are released
        await asyncio.sleep(0)
        await early.events.add("inference.requests", {"n": "3"})

    await asyncio.gather(gate.release(), late())
    await asyncio.wait_for(opened, 1)
    await early.events.add("inference.completed", {"n": "4"})
    await rc.events.settle()
    assert publisher.sent == [("retrieval.results", "1"), ("routing.decisions", "2"), ("inference.requests", "3"),
                              ("inference.completed", "4")]


async def test_a_blocked_request_sends_nothing_of_its_answer() -> None:
    publisher = _Publisher()
    rc = _context(publisher)
    early, _ = gated(rc)
    await early.events.add("routing.decisions", {"n": "1"})
    waiting = asyncio.create_task(early.events.wait_open())
    await asyncio.sleep(0.01)
    waiting.cancel()  # what a block does to the answer waiting at the gate
    await asyncio.gather(waiting, return_exceptions=True)
    await rc.events.settle()
    assert waiting.cancelled() and publisher.sent == []
