"""Token chunks for this edge instance's requests, read from its own reply topic and handed to the HTTP
handler waiting for each request. Queues are bounded: a reader too slow to keep up is cut off, never
allowed to grow memory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from conflux.errors import ConfluxError, DecodeError
from conflux.kafka import make_consumer
from conflux.serde import AvroSerde

log = logging.getLogger("conflux.edge.replies")


class ReplyRouter:
    def __init__(self, bootstrap: str, topic: str, serde: AvroSerde, queue_size: int = 4096,
                 dead_letter: Callable[[Any, Exception], Awaitable[None]] | None = None) -> None:
        self.topic = topic
        self._dead_letter = dead_letter
        self._bootstrap = bootstrap
        self._serde = serde
        self._queue_size = queue_size
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._next_seq: dict[str, int] = {}  # per request: the sequence of the next chunk it should get
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # No consumer group: this instance alone reads its topic, from the end (older chunks belong to
        # requests this process never held).
        self._consumer = make_consumer(self._bootstrap, None, fetch_max_wait_ms=5, isolation_level="read_uncommitted")
        await self._consumer.start()
        tp = TopicPartition(self.topic, 0)
        self._consumer.assign([tp])
        await self._consumer.seek_to_end(tp)
        await self._consumer.position(tp)
        self._task = asyncio.create_task(self._run(), name=f"replies-{self.topic}")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer:
            await self._consumer.stop()

    def register(self, request_id: str) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._queue_size)
        self._queues[request_id] = q
        self._next_seq[request_id] = 0
        return q

    def unregister(self, request_id: str) -> None:
        self._queues.pop(request_id, None)
        self._next_seq.pop(request_id, None)

    @property
    def open_requests(self) -> int:
        return len(self._queues)

    async def _run(self) -> None:
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=200, max_records=1000)
            except KafkaError as exc:
                # The reader must outlive a broker hiccup: open streams wait (up to their timeout), not die.
                log.warning("reading %s failed, retrying: %r", self.topic, exc)
                await asyncio.sleep(0.5)
                continue
            for msgs in batch.values():
                for msg in msgs:
                    try:
                        self._dispatch(msg.value)
                    except DecodeError as exc:
                        log.warning("undecodable message on %s@%s: %s", self.topic, msg.offset, exc)
                        if self._dead_letter is not None:
                            try:
                                await self._dead_letter(msg, exc)
                            except ConfluxError as dl_exc:  # the broker is down: the reader keeps going
                                log.error("could not dead-letter %s@%s: %s", self.topic, msg.offset, dl_exc)

    def _dispatch(self, value: bytes | None) -> None:
        chunk = self._serde.decode(value or b"", expected="token_chunk").record
        request_id = chunk["envelope"]["request_id"]
        q = self._queues.get(request_id)
        if q is None:
            return  # the caller left; its generation is being cancelled
        seq, expected = chunk["sequence"], self._next_seq.get(request_id, 0)
        if seq < expected and not chunk["is_final"]:
            # Delivery is at least once: a chunk sent again must not repeat text the caller already has.
            log.warning("dropping chunk %d of %s: a duplicate (next expected %d)", seq, request_id, expected)
            return
        self._next_seq[request_id] = max(expected, seq + 1)
        try:
            q.put_nowait(chunk)
        except asyncio.QueueFull:
            log.warning("reader of %s too slow; ending its stream", request_id)
            self.unregister(request_id)
