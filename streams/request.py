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

from conflux.inference import TritonClient
from conflux.kafka import PendingEvents
from conflux.safety_model import HEAD_CHARS
from conflux.taxonomy import Policy
from streams.tools import Guide
from streams.tools import plan as plan_guide


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
    _embedding: asyncio.Task[Any] | None = field(default=None, repr=False)

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
        if self._embedding is None:
            text = self.newest_user_message[:HEAD_CHARS]
            self._embedding = asyncio.ensure_future(_first_row(triton, text))
        return self._embedding


async def _first_row(triton: TritonClient, text: str) -> Any:
    return (await triton.embed([text]))[0]


class GatedEvents(PendingEvents):
    """Events of stages that run before the input verdict (retrieval, prompt build): held until the verdict
    allows the request, then sent with the rest; dropped if it blocks, so that a refused request's record is
    what it was when the stages ran one after another (no retrieval, no prompt for a refused prompt)."""

    def __init__(self, events: PendingEvents) -> None:
        super().__init__(events.publisher)  # nothing is sent through this one: it only holds
        self._events = events
        self._held: list[tuple[str, dict[str, Any], str | None]] = []

    async def add(self, topic: str, record: dict[str, Any], key: str | None = None) -> None:
        self._held.append((topic, record, key))

    async def release(self) -> None:
        held, self._held = self._held, []
        for topic, record, key in held:
            await self._events.add(topic, record, key=key)


def gated(rc: RequestContext) -> tuple[RequestContext, GatedEvents]:
    """A view of the request whose events wait for the input verdict; it shares the request's embedding."""
    gate = GatedEvents(rc.events)
    return replace(rc, events=gate), gate
