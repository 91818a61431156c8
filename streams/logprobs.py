"""Logprobs released with the text they belong to.

The text a caller sees is the model's pieces after stop sequences (streams/stop_sequences.py, which may hold
text back or cut it) and output checks (streams/output_guard.py, which release it in windows). Each piece's
logprobs go out with the chunk that carries the piece's first character; a piece never released (cut by a
stop sequence, or behind a blocked window) takes its logprobs with it.
"""

from __future__ import annotations

from collections import deque
from typing import Any


class AlignedLogprobs:
    def __init__(self) -> None:
        self._pieces: deque[tuple[int, list[dict[str, Any]]]] = deque()  # (first character's offset, entries)
        self._generated = 0  # characters the model has produced
        self._released = 0  # characters sent to the caller

    def add(self, chars: int, entries: list[dict[str, Any]] | None) -> None:
        """A model piece of `chars` characters and its tokens' entries, in generation order."""
        if entries and chars:
            self._pieces.append((self._generated, entries))
        self._generated += chars

    def take(self, chars: int) -> list[dict[str, Any]]:
        """The entries of the next `chars` characters to leave."""
        self._released += chars
        out: list[dict[str, Any]] = []
        while self._pieces and self._pieces[0][0] < self._released:
            out += self._pieces.popleft()[1]
        return out
