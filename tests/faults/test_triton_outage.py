"""Triton down: callers get a clear error at once, never a hang, and service resumes when it is back."""

from __future__ import annotations

import time

import openai

from conflux.config import Settings
from conflux.stack import manager
from tests.faults.helpers import responses_by_request


def test_requests_fail_fast_while_triton_is_down_and_succeed_after(stack: Settings) -> None:
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", max_retries=0, timeout=30,
                           api_key=(stack.home / "dev-api-key").read_text().strip())
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
            assert "model server is unavailable" in message and "dead letter" in message
            assert "127.0.0.1" not in message  # no internal addresses in client errors
        assert time.monotonic() - t0 < 10
    finally:
        manager.up(stack, lambda m: None, ["triton"])
    deadline = time.monotonic() + 10  # recovery: the worker reconnects within about a second
    while True:
        try:
            answer = client.chat.completions.create(model="echo", max_tokens=2,
                                                    messages=[{"role": "user", "content": "back again"}])
            break
        except openai.APIStatusError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert answer.choices[0].message.content == "back again"
    # The record agrees: one final event each, an error for the request Triton could not serve.
    ended = responses_by_request(stack, [failed, answer.id])
    assert len(ended[failed]) == 1 and ended[failed][0][1] and len(ended[answer.id]) == 1
    assert not ended[answer.id][0][1]
