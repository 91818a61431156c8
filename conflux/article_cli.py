"""`conflux article TOPIC`: start an article run on an edge (POST /v1/workflows/article) and follow it live
(GET /v1/workflows/{id}/events) with a progress bar per step. Progress goes to stderr, the article to stdout, so
`conflux article "tides" > tides.md` keeps the bars on the terminal and the text in the file.

A bar fills with the tokens a generate step has written against its max_tokens; outline and research steps
fill when they end. On a terminal the bars are redrawn in place; elsewhere (a log, CI) one line is printed per
change of a step's status.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

import httpx

BAR_WIDTH = 24
MARKS = {"pending": " ", "running": ">", "succeeded": "=", "failed": "!", "cancelled": "x"}


class ArticleError(Exception):
    """The edge refused the request or could not be reached; the message is the one to show."""


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, data) pairs of a server-sent event stream; comments (`: ping`) are skipped."""
    kind, data = "message", ""
    for line in lines:
        if not line:
            if data:
                yield kind, json.loads(data)
            kind, data = "message", ""
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data += line[5:].strip()


def bar(step: dict[str, Any], width: int = BAR_WIDTH) -> str:
    """`[=========>          ]  45%` for a step as GET /v1/workflows/{id} shows it."""
    status = step.get("status", "pending")
    share = 1.0 if status == "succeeded" else float(step.get("progress") or 0.0)
    full = int(share * width)
    head = MARKS.get(status, "?") if full < width and status != "pending" else ""
    return f"[{'=' * full}{head}{' ' * (width - full - len(head))}] {share * 100:3.0f}%"


def step_line(step: dict[str, Any], now: float, name_width: int = 12) -> str:
    status = step.get("status", "pending")
    text = f"{step['step']:<{name_width}} {bar(step)}  {status:<9}"
    started, ended = step.get("started_at"), step.get("ended_at")
    if started:
        text += f" {(ended or now) - started:6.1f}s"
    if (step.get("attempts") or 0) > 1:
        text += f"  attempt {step['attempts']}"
    if step.get("worker"):
        text += f"  {step['worker']}"
    if status == "failed" and step.get("error"):
        text += f"  {step['error'][:120]}"
    return text


@dataclass
class ProgressView:
    """The steps seen so far, drawn to `out`: redrawn in place when `live`, else a line per status change."""

    out: TextIO
    live: bool
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)
    _drawn: int = 0

    def update(self, step: dict[str, Any]) -> None:
        before = self.steps.get(step["step"], {}).get("status")
        self.steps[step["step"]] = step
        if self.live:
            self.redraw()
        elif step.get("status") != before:
            self.out.write(step_line(step, time.time()) + "\n")
            self.out.flush()

    def redraw(self) -> None:
        if not self.live:
            return
        width = max([12, *(len(s) for s in self.steps)])
        lines = [step_line(s, time.time(), width) for s in self.steps.values()]
        # Back to the first line drawn last time, then each line cleared and written again.
        up = f"\x1b[{self._drawn}F" if self._drawn else ""
        self.out.write(up + "".join(f"\x1b[2K{line}\n" for line in lines))
        self.out.flush()
        self._drawn = len(lines)


def render_article(run: dict[str, Any]) -> str:
    """The finished article as Markdown: the title, the text, then its numbered sources."""
    parts = [f"# {run['input']['topic']}", "", (run.get("article") or "").strip()]
    citations = run.get("citations") or []
    if citations:
        parts += ["", "## Sources"]
        heads = run.get("sections") or []
        for c in citations:  # numbered per section, as each section's writer was given them
            i = int(c.get("section", 0))
            head = heads[i] if i < len(heads) else f"section {i + 1}"
            snippet = " ".join(str(c.get("text", "")).split())[:160]
            parts.append(f"- {head} [{c.get('n')}] {c.get('source') or c.get('document_id')}: {snippet}")
    return "\n".join(parts) + "\n"


def _error_of(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error") or {}
        return f"HTTP {resp.status_code}: {err.get('message') or resp.text}"
    except (ValueError, AttributeError):
        return f"HTTP {resp.status_code}: {resp.text[:300]}"


def start(http: httpx.Client, body: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
    resp = http.post("/v1/workflows/article", json=body, headers=headers)
    if resp.status_code not in (200, 202):
        raise ArticleError(_error_of(resp))
    return dict(resp.json())


def follow(http: httpx.Client, run_id: str, view: ProgressView) -> dict[str, Any]:
    """Draws the run's steps as they change; returns the run once it has ended."""
    with http.stream("GET", f"/v1/workflows/{run_id}/events", timeout=httpx.Timeout(60, read=120)) as resp:
        if resp.status_code != 200:
            resp.read()
            raise ArticleError(_error_of(resp))
        for kind, data in parse_sse(resp.iter_lines()):
            if kind == "step":
                view.update(data)
            elif kind == "run":
                view.redraw()
                return data
            elif kind == "timeout":
                raise ArticleError(f"the run {run_id} is still going; follow it again with --follow {run_id}")
    raise ArticleError(f"the edge closed the event stream of {run_id} before the run ended; "
                       f"follow it again with --follow {run_id}")


def run_article(base_url: str, api_key: str, body: dict[str, Any] | None, follow_id: str | None,
                out: TextIO, err: TextIO, as_json: bool = False, idempotency_key: str | None = None,
                transport: httpx.BaseTransport | None = None) -> int:
    """0 when the article was written, 1 when the run failed or was cancelled; ArticleError when the edge said no."""
    started = time.monotonic()
    try:
        with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=60,
                          transport=transport) as http:
            if follow_id is None:
                assert body is not None
                run_id = start(http, body, idempotency_key)["id"]
                err.write(f"run {run_id} started (follow it again with: conflux article --follow {run_id})\n")
            else:
                run_id = follow_id
            run = follow(http, run_id, ProgressView(err, live=err.isatty()))
    except httpx.HTTPError as exc:
        raise ArticleError(f"cannot reach the edge at {base_url}: {exc}") from None
    if as_json:
        out.write(json.dumps(run, indent=2) + "\n")
    elif run["status"] == "succeeded":
        out.write(render_article(run))
    err.write(f"run {run['id']} {run['status']} in {time.monotonic() - started:.1f}s, "
              f"cost ${run.get('cost_usd', 0):.6f}" + (f": {run['error']}" if run.get("error") else "") + "\n")
    return 0 if run["status"] == "succeeded" else 1
