"""`conflux article`: its SSE reading, bars and output, against an edge faked with httpx.MockTransport (the real
edge is tests/integration/test_workflows.py)."""

from __future__ import annotations

import io
import json
from typing import Any

import httpx
import pytest

from conflux.article_cli import ArticleError, ProgressView, bar, parse_sse, render_article, run_article


def _sse(*events: tuple[str, dict[str, Any]]) -> str:
    return ": ping\n\n" + "".join(f"event: {k}\ndata: {json.dumps(d)}\n\n" for k, d in events)


def _step(name: str, status: str, progress: float = 0.0, **extra: Any) -> dict[str, Any]:
    return {"step": name, "status": status, "progress": progress, "attempts": 1, "started_at": 100.0,
            "ended_at": 102.5 if status in ("succeeded", "failed") else None, "worker": "worker-1", **extra}


RUN = {"id": "wf_1", "status": "succeeded", "input": {"topic": "Tides"}, "article": "## Moon\nIt pulls.",
       "sections": ["Moon"], "cost_usd": 0.000012, "error": None,
       "citations": [{"section": 0, "n": 1, "source": "tides.md", "document_id": "d1", "text": "The  Moon\npulls."}]}


def _edge(events: str, seen: list[httpx.Request], create_status: int = 202) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "POST":
            if create_status != 202:
                return httpx.Response(create_status, json={"error": {"message": "topic: required"}})
            return httpx.Response(202, json={"id": "wf_1", "status": "running"})
        return httpx.Response(200, text=events, headers={"content-type": "text/event-stream"})
    return httpx.MockTransport(handler)


def test_sse_events_are_parsed_and_comments_skipped() -> None:
    text = _sse(("step", {"step": "outline"}), ("run", {"id": "x"}))
    assert list(parse_sse(text.splitlines())) == [("step", {"step": "outline"}), ("run", {"id": "x"})]


@pytest.mark.parametrize(("status", "progress", "filled"), [
    ("pending", 0.0, 0), ("running", 0.5, 12), ("running", 0.99, 23), ("succeeded", 0.2, 24), ("failed", 0.25, 6)])
def test_a_bar_fills_with_the_steps_progress(status: str, progress: float, filled: int) -> None:
    drawn = bar({"status": status, "progress": progress})
    assert drawn.startswith("[") and len(drawn.split("]")[0]) == 25
    assert drawn.count("=") == filled
    assert drawn.endswith(f"{(1.0 if status == 'succeeded' else progress) * 100:3.0f}%")


def test_a_run_is_started_followed_and_its_article_printed() -> None:
    seen: list[httpx.Request] = []
    events = _sse(("step", _step("outline", "running")), ("step", _step("outline", "succeeded", 1.0)),
                  ("step", _step("write.0", "running", 0.4)), ("step", _step("write.0", "running", 0.8)),
                  ("step", _step("write.0", "succeeded", 1.0)), ("run", RUN))
    out, err = io.StringIO(), io.StringIO()
    code = run_article("http://edge", "sk-test", {"topic": "Tides", "sections": 1}, None, out, err,
                       idempotency_key="k1", transport=_edge(events, seen))
    assert code == 0
    post, get = seen
    assert json.loads(post.content) == {"topic": "Tides", "sections": 1}
    assert post.headers["authorization"] == "Bearer sk-test" and post.headers["idempotency-key"] == "k1"
    assert get.url.path == "/v1/workflows/wf_1/events"
    assert out.getvalue() == render_article(RUN)
    assert "# Tides" in out.getvalue() and "- Moon [1] tides.md: The Moon pulls." in out.getvalue()
    lines = err.getvalue().splitlines()
    # Not a terminal: one line per status change, not per progress report.
    assert [ln.split()[0] for ln in lines[1:-1]] == ["outline", "outline", "write.0", "write.0"]
    assert "succeeded" in lines[-1] and "$0.000012" in lines[-1]


def test_a_failed_run_exits_1_with_its_error() -> None:
    failed = {**RUN, "status": "failed", "article": None, "error": "step edit failed: timed out"}
    err = io.StringIO()
    code = run_article("http://edge", "k", None, "wf_1", io.StringIO(), err,
                       transport=_edge(_sse(("step", _step("edit", "failed", error="timed out")), ("run", failed)), []))
    assert code == 1 and "step edit failed: timed out" in err.getvalue()


def test_a_refused_request_shows_the_edges_message() -> None:
    with pytest.raises(ArticleError, match="HTTP 400: topic: required"):
        run_article("http://edge", "k", {"topic": ""}, None, io.StringIO(), io.StringIO(),
                    transport=_edge("", [], create_status=400))


def test_a_stream_that_ends_early_says_how_to_follow_again() -> None:
    with pytest.raises(ArticleError, match="--follow wf_1"):
        run_article("http://edge", "k", None, "wf_1", io.StringIO(), io.StringIO(),
                    transport=_edge(_sse(("step", _step("outline", "running"))), []))


def test_an_unreachable_edge_is_a_clear_error() -> None:
    with pytest.raises(ArticleError, match=r"cannot reach the edge at http://127\.0\.0\.1:9"):
        run_article("http://127.0.0.1:9", "k", {"topic": "x"}, None, io.StringIO(), io.StringIO())


def test_on_a_terminal_the_bars_are_redrawn_in_place() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    view = ProgressView(out, live=True)
    view.update(_step("outline", "running"))
    view.update(_step("outline", "succeeded", 1.0))
    view.update(_step("write.0", "running", 0.5))
    view.update(_step("write.0", "running", 0.9))
    text = out.getvalue()
    # Up one line twice (one step drawn), then up two (both steps drawn): nothing is printed below old bars.
    assert text.count("\x1b[1F") == 2 and text.count("\x1b[2F") == 1
    last = text.rsplit("\x1b[2F", 1)[1].split("\n")[:-1]
    assert [ln.removeprefix("\x1b[2K").split()[0] for ln in last] == ["outline", "write.0"]
    assert "90%" in last[1] and "100%" in last[0]
