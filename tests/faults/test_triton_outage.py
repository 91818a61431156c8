"""Triton down: callers get a clear error at once, never a hang, and service resumes when it is back."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import openai

from conflux.config import Settings
from conflux.stack import manager
from conflux.stack.supervise import group_members
from tests.faults.helpers import responses_by_request


def test_requests_fail_fast_while_triton_is_down_and_succeed_after(stack: Settings) -> None:
    client = _client(stack)
    triton = manager.by_name(stack, "triton")
    triton.stop()
    try:
        t0 = time.monotonic()
        try:
            client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "hi"}], max_tokens=3)
            raise AssertionError("answered without a model server")
        except openai.APIStatusError as exc:
            assert exc.status_code == 502
            failed = exc.response.headers["x-request-id"]
            message = str(exc.body)
            # The first call to meet the outage depends on the worker's caches: the routing stage's model index
            # (dead-lettered, "the model server is unavailable") or, when that index is still fresh and the safety
            # prefilter cleared "hi" without an embedding, the generation itself.
            assert ("model server is unavailable" in message and "dead letter" in message) \
                or "the model server failed during generation" in message, message
            assert "127.0.0.1" not in message  # no internal addresses in client errors
        assert time.monotonic() - t0 < 10
    finally:
        manager.up(stack, lambda m: None, ["triton"])
    # Recovery: the worker reconnects within about a second.
    answer = _echo_when_back(client, "back again", time.monotonic() + 10)
    assert answer.choices[0].message.content == "back again"
    # The record agrees: one final event each, an error for the request Triton could not serve.
    ended = responses_by_request(stack, [failed, answer.id])
    assert len(ended[failed]) == 1 and ended[failed][0][1] and len(ended[answer.id]) == 1
    assert not ended[answer.id][0][1]


def _tritonserver_pid(supervisor: int) -> int:
    """The tritonserver process under the stack's supervisor (its process group, not a backend stub)."""
    for pid in group_members(supervisor, but=supervisor):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"/tritonserver"):
                return pid
    raise AssertionError(f"no tritonserver in process group {supervisor}")


def _client(stack: Settings) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", max_retries=0, timeout=30,
                         api_key=(stack.home / "dev-api-key").read_text().strip())


def _echo_when_back(client: openai.OpenAI, text: str, deadline: float) -> Any:
    """An echo chat of `text`, retried until Triton serves again (an error after `deadline`)."""
    while True:
        try:
            return client.chat.completions.create(model="echo", max_tokens=len(text.split()),
                                                  messages=[{"role": "user", "content": text}])
        except openai.APIStatusError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def test_a_crashed_triton_is_restarted_and_chats_resume(stack: Settings) -> None:
    """Triton 2.51 can die of SIGSEGV when a client drops its streams (conflux/stack/supervise.py says why):
    the stack restarts it, as compose and Kubernetes would, and the worker uses the new one by itself."""
    client = _client(stack)
    triton = manager.by_name(stack, "triton")
    supervisor = triton.pid()
    assert supervisor is not None
    crashed = _tritonserver_pid(supervisor)
    os.kill(crashed, signal.SIGSEGV)
    deadline = time.monotonic() + 60  # a restart loads every model again: about 5 s here
    while True:  # the old server answers a little longer while its own handler prints its backtrace
        with contextlib.suppress(AssertionError):
            if _tritonserver_pid(supervisor) != crashed:
                break
        assert time.monotonic() < deadline, "Triton was not restarted"
        time.sleep(0.2)
    answer = _echo_when_back(client, "after the crash", deadline)
    assert answer.choices[0].message.content == "after the crash"
    assert triton.pid() == supervisor
    assert triton.health().ok
    assert "killed by SIGSEGV; restarting" in triton.log_file.read_text()
