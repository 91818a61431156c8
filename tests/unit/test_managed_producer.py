"""ManagedProducer replaces a producer that aiokafka has declared unusable (after a broker restart, an
OutOfOrderSequenceNumber ends its sender for good) and leaves every other failure to the caller."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, KafkaTimeoutError, OutOfOrderSequenceNumber

from conflux.kafka import ManagedProducer


class FakeProducer:
    """Records what it was sent; fails every send with `fail_with` once that is set, like a dead aiokafka one."""

    def __init__(self, fail_with: Exception | None = None, start_fails: bool = False) -> None:
        self.sent: list[tuple[str, bytes | None]] = []
        self.fail_with = fail_with
        self.start_fails = start_fails
        self.started = self.stopped = False

    async def start(self) -> None:
        if self.start_fails:
            raise KafkaConnectionError("broker still down")
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, topic: str, value: bytes | None = None, **_: Any) -> asyncio.Future[Any]:
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append((topic, value))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        fut.set_result(("meta", topic))
        return fut

    async def send_and_wait(self, topic: str, value: bytes | None = None, **kw: Any) -> Any:
        return await (await self.send(topic, value, **kw))


def managed(*producers: FakeProducer) -> tuple[ManagedProducer, list[FakeProducer]]:
    made: list[FakeProducer] = []
    queue = list(producers)

    def factory() -> Any:
        made.append(queue.pop(0))
        return made[-1]

    return ManagedProducer(factory), made


async def test_an_out_of_order_sequence_replaces_the_producer_and_the_send_lands_once() -> None:
    mp, made = managed(FakeProducer(fail_with=OutOfOrderSequenceNumber()), FakeProducer())
    await mp.start()
    assert await mp.send_and_wait("t", b"v") == ("meta", "t")
    assert made[0].stopped and made[0].sent == []
    assert made[1].sent == [("t", b"v")]
    assert mp.replacements == 1
    await mp.send_and_wait("t", b"w")  # later sends use the new producer
    assert made[1].sent == [("t", b"v"), ("t", b"w")]


async def test_concurrent_failing_sends_replace_the_producer_once() -> None:
    mp, made = managed(FakeProducer(fail_with=OutOfOrderSequenceNumber()), FakeProducer(), FakeProducer())
    await mp.start()
    await asyncio.gather(*(mp.send("t", str(i).encode()) for i in range(20)))
    assert mp.replacements == 1 and len(made) == 2
    assert {v for _, v in made[1].sent} == {str(i).encode() for i in range(20)} and len(made[1].sent) == 20


async def test_a_timeout_is_the_callers_to_handle_and_keeps_the_producer() -> None:
    mp, made = managed(FakeProducer(fail_with=KafkaTimeoutError()))
    await mp.start()
    with pytest.raises(KafkaTimeoutError):
        await mp.send_and_wait("t", b"v")
    assert mp.replacements == 0 and not made[0].stopped


async def test_a_replacement_that_cannot_start_fails_the_send_and_is_tried_again_next_time() -> None:
    mp, made = managed(FakeProducer(fail_with=OutOfOrderSequenceNumber()), FakeProducer(start_fails=True),
                       FakeProducer())
    await mp.start()
    with pytest.raises(KafkaConnectionError):
        await mp.send_and_wait("t", b"v")
    assert mp.replacements == 0 and not made[0].stopped  # still the dead one: the next send tries again
    await mp.send_and_wait("t", b"v")
    assert mp.replacements == 1 and made[2].sent == [("t", b"v")] and made[0].stopped


async def test_sending_before_start_is_a_publish_error() -> None:
    from conflux.errors import PublishError

    mp, _ = managed(FakeProducer())
    with pytest.raises(PublishError):
        await mp.send("t", b"v")
