"""Load shedding: refuse a chat at once (503 + Retry-After) while the chain is behind, instead of letting it
wait into a 504 after the chain timeout. Per plan: each plan may be admitted up to its `load_share` of the
capacity, so a free tenant's burst is shed before it can starve an enterprise tenant.

Pressure is the larger of this edge's open requests over its bound and the chain's backlog on chat.requests
(the worker group's consumer lag) over its bound; the lag is sampled in the background, never on a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from conflux.kafka_access import KafkaAccess
from conflux.models import Plan
from edge.errors import ApiError

log = logging.getLogger("conflux.edge.load")
RETRY_AFTER_S = 1


class RequestLag:
    """The chain's consumer lag on its request topic: end offsets minus the group's committed offsets."""

    def __init__(self, kafka: KafkaAccess | str, topic: str = "chat.requests", group: str = "conflux-chain",
                 interval_s: float = 1.0) -> None:
        self._kafka = KafkaAccess.of(kafka)
        self._topic = topic
        self._group = group
        self._interval_s = interval_s
        self.value = 0
        self._admin: AIOKafkaAdminClient | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._admin = AIOKafkaAdminClient(**self._kafka.client_options(), request_timeout_ms=3000)
        self._consumer = AIOKafkaConsumer(**self._kafka.client_options(), group_id=None,
                                          enable_auto_commit=False, request_timeout_ms=3000)
        await self._admin.start()
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="request-lag")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(KafkaError):
            if self._consumer is not None:
                await self._consumer.stop()
            if self._admin is not None:
                await self._admin.close()

    async def sample(self) -> int:
        assert self._admin is not None and self._consumer is not None
        committed = await self._admin.list_consumer_group_offsets(self._group)
        tps = [tp for tp in committed if tp.topic == self._topic]
        if not tps:
            return 0
        ends = await self._consumer.end_offsets(tps)
        return sum(max(0, ends[tp] - committed[tp].offset) for tp in tps if committed[tp].offset >= 0)

    async def _run(self) -> None:
        while True:
            try:
                self.value = await self.sample()
            except (KafkaError, OSError) as exc:
                # Unknown lag is not a reason to refuse work; the open-request bound still holds.
                log.warning("consumer lag of %s unavailable: %r", self._group, exc)
                self.value = 0
            await asyncio.sleep(self._interval_s)


class LoadGauge:
    def __init__(self, open_requests: Callable[[], int], max_open: int, lag: Callable[[], int],
                 max_lag: int) -> None:
        self._open = open_requests
        self._max_open = max(1, max_open)
        self._lag = lag
        self._max_lag = max(1, max_lag)

    def pressure(self) -> float:
        return max(self._open() / self._max_open, self._lag() / self._max_lag)

    def admit(self, plan: Plan) -> None:
        """ApiError(503) when the plan's share of the capacity is used up."""
        pressure = self.pressure()
        if pressure >= plan.load_share:
            raise ApiError(503, f"the platform is overloaded (load {pressure:.0%}; plan '{plan.name}' is served "
                           f"up to {plan.load_share:.0%}); retry after {RETRY_AFTER_S}s", "server_error",
                           code="overloaded", headers={"Retry-After": str(RETRY_AFTER_S)})
