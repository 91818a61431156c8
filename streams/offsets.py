"""Input offsets the worker commits: never past a request that is still being processed.

An agent with concurrency > 1 finishes its events out of order, and Faust commits the first run of consecutive
acked offsets. faust-streaming 0.15.3 (`Consumer._new_offset`) only holds that run back when it starts more than
one offset above the committed position, and not at all while the position is unknown (None) or 0. So with the
request at offset N still streaming and N+1 already answered (a refusal, a short answer), it commits N+2: a
worker killed then loses request N, which no replay will ever see, and its caller waits for a timeout instead
of an answer or an explicit error (seen as "no answer within 65s" in `tests/faults/test_budget_kill.py`).

The consumer here holds a partition's commit back while any message delivered to a stream and not yet acked
sits below the first acked offset. Faust tracks those messages itself (`_unacked_messages`, filled before a
message reaches a stream, emptied on its ack); messages not yet delivered all come after the delivered ones,
so they cannot open a gap below an acked offset.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger("conflux.streams")


def held_back(tp: Any, acked: Iterable[int], unacked: Iterable[Any], committed: int | None) -> bool:
    """True when a message of `tp` still in flight lies below every acked offset of `tp`: committing the
    acked run would skip it. A message below the committed position does not count: it is one a rebalance
    dropped from a stream's buffer unacked, and processed again since (were it counted, and still referenced,
    the partition would never commit again)."""
    first_acked = min(acked, default=None)
    if first_acked is None:
        return False
    floor = committed or 0
    return any(m.tp == tp and not m.acked and floor <= m.offset < first_acked for m in list(unacked))


class InOrderConsumer(faust_aiokafka.Consumer):  # type: ignore[misc]
    def _new_offset(self, tp: Any) -> int | None:
        committed = self._committed_offset[tp]
        if held_back(tp, self._acked[tp], self._unacked_messages, committed):
            if not committed or min(self._acked[tp]) - committed <= 1:  # Faust's own check would let it pass
                log.info("commit of %s[%d] held at %s: a message below the finished offsets %s is in flight",
                         tp.topic, tp.partition, committed, sorted(self._acked[tp])[:4])
            return None
        return super()._new_offset(tp)  # type: ignore[no-any-return]


class InOrderTransport(faust_aiokafka.Transport):  # type: ignore[misc]
    Consumer = InOrderConsumer
