"""One request's state while the pipeline runs it, held in memory by the worker that runs it.

What must outlive this worker (once-claims, the streamed mark, cancel flags, session memory) stays in Redis;
everything else (the request, the tenant's plan, the embedding, the events in flight) lives here and dies with
the request, so a worker's memory does not grow with traffic.
"""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass, field, replace
from typing import Any

from conflux.errors import ConfluxError
from conflux.inference import TritonClient
from conflux.kafka import PendingEvents
from conflux.safety_model import HEAD_CHARS
from conflux.taxonomy import Policy
from streams.tools import Guide
from streams.tools import plan as plan_guide


@dataclass
class _Shared:
    task: asyncio.Task[Any] | None = None


@dataclass
class RequestContext:
    request: dict[str, Any]
    plan: str
    system_prompt: str
    started: float  # wall clock (time.time()) when the worker took the request
    events: PendingEvents
    policy: Policy  # the tenant's safety policy over the taxonomy
    fetch_allow: tuple[str, ...] = ()  # the tenant's hosts for the fetch_url tool (conflux tenants set-tools)
    docs_version: bytes | None = None  # the tenant record's field; absent while it never ingested (documents.py)
    # Session memory as read with the request's first Redis round trip (LRANGE's reply, or its error), or None
    # when it was not read there (streams/prompt_build.py's recall reads it then).
    memory: list[bytes] | Exception | None = None
    # A holder, not the task itself: the gated view (`gated`) is a copy of this context, and both must share one
    # embedding task (a copied None let each view embed the message again).
    _embedding: _Shared = field(default_factory=_Shared, repr=False)

    @property
    def env(self) -> dict[str, Any]:
        return self.request["envelope"]  # type: ignore[no-any-return]

    @property
    def request_id(self) -> str:
        return str(self.env["request_id"])

    @property
    def key(self) -> str:
        """Events of a conversation share a key, so they stay in order on every topic."""
        return str(self.env["conversation_id"])

    @property
    def newest_user_message(self) -> str:
        return next((m["content"] for m in reversed(self.request["messages"]) if m["role"] == "user"), "")

    @property
    def max_tokens(self) -> int:
        return int(self.request["max_tokens"] or 256)

    @functools.cached_property
    def guide(self) -> Guide | None:
        """How the output is constrained (tools, response_format), or None for free text."""
        return plan_guide(self.request)

    def embedding(self, triton: TritonClient) -> asyncio.Task[Any]:
        """The newest user message's embedding, computed once and shared by input safety and retrieval
        (which run side by side)."""
        if self._embedding.task is None:
            text = self.newest_user_message[:HEAD_CHARS]
            self._embedding.task = asyncio.ensure_future(_first_row(triton, text))
        return self._embedding.task


async def _first_row(triton: TritonClient, text: str) -> Any:
    return (await triton.embed([text]))[0]


class Refused(ConfluxError):
    """The input verdict blocked the request: its answer, made beside the verdict, is dropped where it stands."""


class GatedEvents(PendingEvents):
    """The events and output of a request's answer while its input verdict is pending (parallel rails).

    Retrieval, prompt build, routing and generation run beside input safety: their events are held here until
    the verdict allows the request, then sent with the rest, and dropped if it blocks, so that a refused request's
    record is what it was when the stages ran one after another (no retrieval, no prompt, no routing, no
    inference for a refused prompt). Nothing reaches the caller before then either: a chunk or an ending waits in
    `wait_open` (Deps.stream_chunk, Deps.end). A block shuts the gate (a waiter gets Refused) as well as
    cancelling the answer, so that an answer which turned its cancellation into an error of its own (a model
    stream cut by it reads as a failed model) cannot end the request or wait forever. Once open, the gate passes
    everything straight through to the request's events."""

    def __init__(self, events: PendingEvents) -> None:
        super().__init__(events.publisher)
        self._events = events
        self._held: list[tuple[str, dict[str, Any], str | None]] = []
        self._open = asyncio.Event()  # set when the verdict allows, or blocks (then _refused too)
        self._refused = False

    async def add(self, topic: str, record: dict[str, Any], key: str | None = None) -> None:
        if self._refused:
            return
        if self._open.is_set():
            await self._events.add(topic, record, key=key)
        else:
            self._held.append((topic, record, key))

    def track(self, future: asyncio.Future[Any]) -> None:
        self._events.track(future)  # a chunk's send: made only once open (wait_open)

    async def settle(self) -> None:
        await self._events.settle()

    async def wait_open(self) -> None:
        await self._open.wait()
        if self._refused:
            raise Refused("the input verdict blocked this request")

    def shut(self) -> None:
        """The verdict blocks the request (or it failed before a verdict): held events are dropped, and every
        waiter gets Refused. Nothing once the gate is open."""
        if self._open.is_set():
            return
        self._held.clear()
        self._refused = True
        self._open.set()

    async def release(self) -> None:
        """The verdict allows the request: the held events go out in the order they were made, then the gate
        opens. An event added while they go is taken in the same loop, so none is left behind or reordered."""
        while self._held:
            topic, record, key = self._held.pop(0)
            await self._events.add(topic, record, key=key)
        self._open.set()


def gated(rc: RequestContext) -> tuple[RequestContext, GatedEvents]:
    """A view of the request whose events and output wait for the input verdict; it shares the request's
    embedding."""
    gate = GatedEvents(rc.events)
    return replace(rc, events=gate), gate
