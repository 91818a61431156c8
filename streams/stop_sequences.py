"""Stop sequences (OpenAI's `stop`): the answer ends before the first of them, which is not returned.

Applied by the worker, not the model, so every model honours them alike (the echo model, llama.cpp here,
TensorRT-LLM on GPUs), and the generation is cancelled as soon as one appears. Text that may be the start
of a stop sequence is held back until the next piece settles it, so no part of a stop sequence ever leaves.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopScanner:
    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The part of `text` (after what was held back) that is certainly answer text."""
        if not self._stops or self.stopped:
            return "" if self.stopped else text
        buf = self._held + text
        found = [i for i in (buf.find(s) for s in self._stops) if i >= 0]
        if found:
            self.stopped = True
            self._held = ""
            return buf[:min(found)]
        keep = max((n for s in self._stops for n in range(min(len(s) - 1, len(buf)), 0, -1)
                    if buf.endswith(s[:n])), default=0)
        self._held = buf[len(buf) - keep:]
        return buf[:len(buf) - keep]

    def flush(self) -> str:
        """What was held back, once the answer has ended without a stop sequence."""
        held, self._held = self._held, ""
        return held
