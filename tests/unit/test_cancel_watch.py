"""The cancel flag is looked up at most every CANCEL_CHECK_EVERY pieces and CANCEL_CHECK_S seconds of a stream."""

from __future__ import annotations

from streams.context import CANCEL_CHECK_EVERY, CANCEL_CHECK_S, CancelWatch


class Flags:
    def __init__(self) -> None:
        self.looks = 0
        self.cancelled_now = False

    async def cancelled(self, request_id: str) -> bool:
        self.looks += 1
        return self.cancelled_now


async def test_a_fast_stream_is_not_asked_every_few_pieces_and_a_slow_one_is() -> None:
    now = [0.0]
    flags = Flags()
    watch = CancelWatch(flags, "r", clock=lambda: now[0])  # type: ignore[arg-type]
    # 100 pieces within a few milliseconds: no look at all.
    for _ in range(100):
        now[0] += 0.0001
        assert not await watch.cancelled()
    assert flags.looks == 0
    # Time passes: the next piece looks, and the one after does not (fewer than CANCEL_CHECK_EVERY since).
    now[0] += CANCEL_CHECK_S
    assert not await watch.cancelled() and flags.looks == 1
    assert not await watch.cancelled() and flags.looks == 1
    # A slow model (each piece CANCEL_CHECK_S apart): one look every CANCEL_CHECK_EVERY pieces, as before.
    flags.cancelled_now = True
    looked_at = []
    for n in range(1, 3 * CANCEL_CHECK_EVERY):
        now[0] += CANCEL_CHECK_S
        if await watch.cancelled():
            looked_at.append(n)
            break
    assert looked_at == [CANCEL_CHECK_EVERY - 1] and flags.looks == 2  # 1 piece was counted before the loop
