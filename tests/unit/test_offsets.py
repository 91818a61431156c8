"""The worker's input offsets: never committed past a request still in flight (streams/offsets.py)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pytest
from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
from faust.types import TP

from conflux.config import Settings
from streams.app import create_worker_app
from streams.offsets import InOrderConsumer, held_back

TP0 = TP("chat.requests", 0)
TP1 = TP("chat.requests", 1)


@dataclass(eq=False)
class Msg:
    tp: TP
    offset: int
    acked: bool = False


def _consumer(cls: type, committed: int | None, acked: list[int], in_flight: list[Msg]) -> Any:
    """A consumer with only the bookkeeping `_new_offset` reads (no broker)."""
    c: Any = object.__new__(cls)
    c._acked = defaultdict(list, {TP0: list(acked)})
    c._acked_index = defaultdict(set, {TP0: set(acked)})
    c._gap = defaultdict(lambda: _NoGaps())
    c._committed_offset = defaultdict(lambda: None, {TP0: committed})
    c._unacked_messages = set(in_flight)
    return c


class _NoGaps:
    def __bool__(self) -> bool:
        return False


@pytest.mark.parametrize("committed", [None, 0, 34])
def test_faust_alone_commits_past_the_request_in_flight(committed: int | None) -> None:
    """Why the subclass exists: the request at the committed position is still streaming, the next one has
    been answered, and faust-streaming 0.15.3 commits past both. (If a Faust upgrade fails this, check whether
    it fixed the gap check, and drop streams/offsets.py if so.)"""
    head = committed or 0
    c = _consumer(FaustConsumer, committed, [head + 1], [Msg(TP0, head)])
    assert FaustConsumer._new_offset(c, TP0) == head + 2


@pytest.mark.parametrize("committed", [None, 0, 34])
def test_a_request_in_flight_below_the_acked_run_holds_the_commit(committed: int | None) -> None:
    head = committed or 0
    c = _consumer(InOrderConsumer, committed, [head + 1, head + 2], [Msg(TP0, head)])
    assert c._new_offset(TP0) is None
    assert c._acked[TP0] == [head + 1, head + 2], "the acked offsets wait for the next commit"
    next(iter(c._unacked_messages)).acked = True  # it finishes: Faust acks it
    c._acked[TP0].insert(0, head)
    c._acked_index[TP0].add(head)
    assert c._new_offset(TP0) == head + 3


def test_in_flight_messages_above_the_run_or_on_other_partitions_do_not_hold_it() -> None:
    c = _consumer(InOrderConsumer, 10, [10, 11], [Msg(TP0, 13), Msg(TP1, 2)])
    assert c._new_offset(TP0) == 12  # 12 is in flight too (not yet delivered), so the run stops before it


def test_held_back() -> None:
    assert not held_back(TP0, [], [Msg(TP0, 1)], None)
    assert held_back(TP0, [5], [Msg(TP0, 4)], None)
    assert held_back(TP0, [5], [Msg(TP0, 4)], 4)
    assert not held_back(TP0, [5], [Msg(TP0, 4, acked=True)], None)
    assert not held_back(TP0, [5], [Msg(TP1, 4)], None)
    assert not held_back(TP0, [5], [Msg(TP0, 6)], None)


def test_a_stale_unacked_message_below_the_committed_position_does_not_stall_commits() -> None:
    """A rebalance dropped offset 40 from a stream's buffer unacked; it was processed again and committed."""
    c = _consumer(InOrderConsumer, 41, [41, 42], [Msg(TP0, 40)])
    assert c._new_offset(TP0) == 43


def test_the_worker_app_consumes_with_it() -> None:
    app = create_worker_app(Settings.from_env(), "worker-offsets-test")
    assert isinstance(app.consumer, InOrderConsumer)
