"""Token chunks for this edge instance's requests, read from its own reply topic and handed to the HTTP
handler waiting for each request. Queues are bounded: a reader too slow to keep up is cut off, never
allowed to grow memory.

Fencing: a chunk carries its generation's epoch (streams/once.py). Before handing a batch on, the router
reads the live epoch of each request in it from Redis (one MGET per batch) and drops chunks of an older
epoch: a worker that stalled, was taken over, and resumed cannot reach the caller, whatever order its chunks
arrive in. A check by the sender before sending would race the resumed process; this one does not, because
the takeover bumps the epoch before the new holder sends anything."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from conflux.errors import ConfluxError, DecodeError
from conflux.kafka import make_consumer
from conflux.kafka_access import KafkaAccess
from conflux.serde import AvroSerde

log = logging.getLogger("conflux.edge.replies")


class ReplyRouter:
    def __init__(self, kafka: KafkaAccess | str, topic: str, serde: AvroSerde, queue_size: int = 4096,
                 dead_letter: Callable[[Any, Exception], Awaitable[None]] | None = None,
                 live_epochs: Callable[[list[str]], Awaitable[list[int | None]]] | None = None) -> None:
        self.topic = topic
        self._dead_letter = dead_letter
        self._kafka = kafka
        self._serde = serde
        self._queue_size = queue_size
        self._queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._next_seq: dict[str, int] = {}  # per request: the sequence of the next chunk it should get
        self._epoch: dict[str, int] = {}  # per request: the newest generation epoch it has been handed
        self._live_epochs = live_epochs
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # No consumer group: this instance alone reads its topic, from the end (older chunks belong to
        # requests this process never held).
        # A long poll: the broker answers a fetch as soon as a chunk arrives, so waiting up to 500 ms costs no
        # latency, while a 5 ms wait made every idle edge send the broker 200 empty fetches a second.
        self._consumer = make_consumer(self._kafka, None, fetch_max_wait_ms=500,
                                       isolation_level="read_uncommitted")
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
        self._epoch.pop(request_id, None)

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
            chunks = [c for msgs in batch.values() for msg in msgs if (c := await self._decode(msg)) is not None]
            live = await self._live(chunks)
            for chunk in chunks:
                self._deliver(chunk, live.get(chunk["envelope"]["request_id"]))

    async def _decode(self, msg: Any) -> dict[str, Any] | None:
        try:
            return self._serde.decode(msg.value or b"", expected="token_chunk").record
        except DecodeError as exc:
            log.warning("undecodable message on %s@%s: %s", self.topic, msg.offset, exc)
            if self._dead_letter is not None:
                try:
                    await self._dead_letter(msg, exc)
                except ConfluxError as dl_exc:  # the broker is down: the reader keeps going
                    log.error("could not dead-letter %s@%s: %s", self.topic, msg.offset, dl_exc)
            return None

    async def _live(self, chunks: list[dict[str, Any]]) -> dict[str, int]:
        """The live generation epoch of each open request with an epoch-carrying chunk in this batch."""
        rids = sorted({c["envelope"]["request_id"] for c in chunks
                       if c.get("epoch") is not None and c["envelope"]["request_id"] in self._queues})
        if not rids or self._live_epochs is None:
            return {}
        try:
            values = await self._live_epochs(rids)
        except RedisError as exc:
            # No worker can take a generation over without Redis either; the chunks' own epochs still order
            # what this router has seen.
            log.warning("live epochs unavailable, checking chunks against each other only: %r", exc)
            return {}
        return {rid: int(v) for rid, v in zip(rids, values, strict=True) if v is not None}

    def _dispatch(self, value: bytes | None, live_epoch: int | None = None) -> None:
        self._deliver(self._serde.decode(value or b"", expected="token_chunk").record, live_epoch)

    def _deliver(self, chunk: dict[str, Any], live_epoch: int | None) -> None:
        request_id = chunk["envelope"]["request_id"]
        q = self._queues.get(request_id)
        if q is None:
            return  # the caller left; its generation is being cancelled
        epoch = chunk.get("epoch")
        if epoch is not None:
            seen = self._epoch.get(request_id, 0)
            if (live_epoch is not None and epoch < live_epoch) or epoch < seen:
                log.warning("dropping chunk %d of %s: epoch %d was taken over (live %s)", chunk["sequence"],
                            request_id, epoch, live_epoch if live_epoch is not None else seen)
                return
            if epoch > seen:  # a new holder of the generation numbers its chunks from 0
                self._epoch[request_id] = epoch
                self._next_seq[request_id] = 0
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
