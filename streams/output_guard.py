"""Output safety on the stream: the answer's text leaves only after a check covering it has passed.

Checks run on the answer so far (rules, and the safety classifier on its tail once there are words enough to
judge) while the model goes on generating. The first check starts at the first piece and is the rules alone
(microseconds), so time to first token stays where it was; later checks start once WINDOW pieces are
unchecked or the oldest unchecked piece has waited HOLD_S, so a fast model is checked every WINDOW pieces and
a slow one every HOLD_S. What is not yet covered by a passed check (the hold-back) is not sent. A check that
blocks stops the generation there: the caller never sees the window that tripped it, and the request ends
with `content_filter`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from conflux.safety import check_rules
from conflux.safety_model import OUTPUT_WINDOW_CHARS, judge, judge_answer_windows
from streams.deps import Deps
from streams.request import RequestContext

WINDOW = 16  # pieces (about tokens) per check on a fast stream
HOLD_S = 0.25  # the longest a piece waits for its check to start on a slow stream
# Below this many characters a check runs the rules alone: a first word says nothing a classifier could judge,
# and skipping the embedding keeps time to first token where it was.
MIN_CLASSIFIED_CHARS = 40


@dataclass(frozen=True)
class OutputVerdict:
    verdict: str  # ALLOW | FLAG | BLOCK
    categories: list[str]
    reasons: list[str]
    score: float | None


# check(answer so far, characters of it already cleared) -> verdict
Check = Callable[[str, int], Awaitable[OutputVerdict]]
# Windows reach back over the cleared text by half a window, so a passage that straddles two checks is still
# read whole by the second.


@dataclass
class StreamGuard:
    check: Check
    pieces: list[str] = field(default_factory=list)
    cleared: int = 0  # pieces covered by a passed check: these may leave
    last: OutputVerdict = field(default_factory=lambda: OutputVerdict("ALLOW", [], [], None))
    blocked: OutputVerdict | None = None
    failed: BaseException | None = None
    checks: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)  # set when `cleared` grows or a check blocks
    _task: asyncio.Task[OutputVerdict] | None = None
    _task_n: int = 0
    _arrived: list[float] = field(default_factory=list)  # monotonic arrival time of each piece

    @property
    def stopped(self) -> bool:
        return self.blocked is not None or self.failed is not None

    def add(self, piece: str) -> None:
        self._arrived.append(time.monotonic())
        self.pieces.append(piece)
        self._maybe_start(force=False)

    async def finish(self) -> None:
        """At the end of generation: every remaining piece checked (or a check blocked or failed)."""
        while not self.stopped and (self._task is not None or self.cleared < len(self.pieces)):
            self._maybe_start(force=True)
            if self._task is not None:
                await asyncio.wait({self._task})
                await asyncio.sleep(0)  # let the done callback run

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _maybe_start(self, force: bool) -> None:
        if self._task is not None or self.stopped:
            return
        pending = len(self.pieces) - self.cleared
        if pending <= 0:
            return
        waited = time.monotonic() - self._arrived[self.cleared]  # the oldest piece no check covers
        if force or self.cleared == 0 or pending >= WINDOW or waited >= HOLD_S:
            self._task_n = len(self.pieces)
            cleared_chars = sum(len(p) for p in self.pieces[:self.cleared])
            self._task = asyncio.ensure_future(self.check("".join(self.pieces), cleared_chars))
            self._task.add_done_callback(self._done)
            self.checks += 1

    def _done(self, task: asyncio.Task[OutputVerdict]) -> None:
        self._task = None
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:
            self.failed = exc  # nothing unchecked is ever released; the generation ends with an error
        elif (result := task.result()).verdict == "BLOCK":
            self.blocked = result
        else:
            self.last = result
            self.cleared = self._task_n
            self._maybe_start(force=False)
        self.progress.set()


def windows(text: str, cleared: int) -> list[str]:
    """The classifier's windows over what is new since `cleared` (and a little before it): every character is
    read by at least one window however fast the model streams, and a window is short enough that a harmful
    passage is not averaged away by the harmless text around it. Windows step by a quarter window, so most of
    any passage lies inside some window wherever the checks happened to start (they start by timing)."""
    stride = OUTPUT_WINDOW_CHARS // 4
    begin = max(0, cleared - 2 * stride)
    ends = [*range(begin + OUTPUT_WINDOW_CHARS, len(text), stride), len(text)]
    return [text[max(0, end - OUTPUT_WINDOW_CHARS):end] for end in ends]


def checker(deps: Deps, rc: RequestContext) -> Check:
    """The output check of this request: rules on the whole answer so far, the classifier on its tail, judged by
    the tenant's policy. Personal data in an answer is flagged (scrubbed from exports), not cut."""

    async def check(text: str, cleared: int) -> OutputVerdict:
        rules = check_rules(text)
        if len(text) < MIN_CLASSIFIED_CHARS:
            verdict = rc.policy.verdict(list(rules.categories))
            return OutputVerdict(verdict, list(rules.categories), list(rules.reasons), None)
        # A window the prefilter clears is not embedded (conflux/safety_prefilter.py); the rest go to the classifier.
        judged, _ = await judge_answer_windows(deps.triton, deps.safety,
                                               deps.prefilter.answer if deps.prefilter is not None else None,
                                               windows(text, cleared))
        model = max(judged, key=lambda j: (j.unsafe, j.p_unsafe))
        verdict, cats, reasons = judge(rc.policy, list(rules.categories), list(rules.reasons), model, [])
        return OutputVerdict(verdict, cats, reasons, model.p_unsafe)

    return check
