"""The stream guard: text leaves only once a check covering it has passed; a blocking check stops the stream
before its window leaves; a failing check releases nothing more."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from streams import output_guard
from streams.output_guard import OutputVerdict, StreamGuard


def _checker(block_on: str | None = None, fail: bool = False,
             delay: float = 0.001) -> tuple[output_guard.Check, list[str]]:
    seen: list[str] = []

    async def check(text: str, cleared: int) -> OutputVerdict:
        seen.append(text)
        await asyncio.sleep(delay)
        if fail:
            raise RuntimeError("embedding failed")
        if block_on and block_on in text:
            return OutputVerdict("BLOCK", ["violent_crimes"], ["classifier"], 0.9)
        return OutputVerdict("ALLOW", [], [], 0.1)

    return check, seen


async def test_the_first_piece_is_checked_at_once_and_the_rest_in_windows() -> None:
    check, seen = _checker()
    guard = StreamGuard(check)
    guard.add("Hello")
    assert guard.cleared == 0  # not before its check passed
    await asyncio.wait_for(guard.progress.wait(), 1)
    assert guard.cleared == 1 and seen == ["Hello"]
    for i in range(output_guard.WINDOW - 1):
        guard.add(f" w{i}")
    assert guard.checks == 1  # fewer than a window unchecked, and not held for HOLD_S yet
    guard.add(" last")
    await guard.finish()
    assert guard.cleared == len(guard.pieces) and not guard.stopped
    assert seen[-1] == "".join(guard.pieces)


async def test_a_piece_held_too_long_gets_its_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output_guard, "HOLD_S", 0.01)
    check, _ = _checker()
    guard = StreamGuard(check)
    guard.add("a")
    await asyncio.sleep(0.02)
    guard.add("b")
    await asyncio.sleep(0.02)
    guard.add("c")  # "b" has waited past HOLD_S: a check starts although the window is not full
    await asyncio.sleep(0.02)
    assert guard.cleared == 3 and guard.checks == 2


async def test_a_blocking_check_stops_the_stream_before_its_window_leaves() -> None:
    check, _ = _checker(block_on="bomb")
    guard = StreamGuard(check)
    guard.add("Sure.")
    await asyncio.wait_for(guard.progress.wait(), 1)
    for word in (" Step", " one:", " build", " the", " bomb"):
        guard.add(word)
    await guard.finish()
    assert guard.blocked is not None and guard.blocked.categories == ["violent_crimes"]
    assert guard.cleared == 1  # only "Sure." ever cleared


async def test_a_failing_check_releases_nothing_unchecked() -> None:
    check, _ = _checker(fail=True)
    guard = StreamGuard(check)
    guard.add("text")
    await guard.finish()
    assert guard.failed is not None and guard.cleared == 0 and guard.stopped


def test_windows_cover_every_new_character_with_some_overlap() -> None:
    text = " ".join(str(i) for i in range(2000))[:5000]  # no repeats: a window is found where it is
    ws = output_guard.windows(text, 1000)
    assert ws[-1] == text[-600:] and all(len(w) <= 600 for w in ws)
    covered = set()
    for w in ws:
        start = text.index(w)
        covered |= set(range(start, start + len(w)))
    assert set(range(700, 5000)) <= covered  # from half a window before the cleared point to the end
    starts = sorted(text.index(w) for w in ws)
    assert all(b - a <= 150 for a, b in itertools.pairwise(starts))  # quarter-window stride
    assert output_guard.windows("short text here", 0) == ["short text here"]
