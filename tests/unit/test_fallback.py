"""Inference-time fallback (streams/inference.py): a model that fails or stays silent before its first token
hands the request to the next fallback, recorded as a routing decision; after the first token, no fallback."""

from __future__ import annotations

import asyncio
from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest

from conflux import taxonomy
from conflux.inference import InferenceError, Piece
from conflux.kafka import PendingEvents
from conflux.routing import Decision
from conflux.safety_model import Judgement
from streams import inference
from streams.deps import Deps
from streams.prompt_build import Built
from streams.request import RequestContext


class Triton:
    """down: refuses at once; slow: silent for 10 s; late: one piece, then fails; anything else answers."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def stream(self, model: str, *args: Any, **kwargs: Any) -> Any:
        self.asked.append(model)
        if model == "down":
            raise InferenceError("model 'down' is not ready")
        if model == "slow":
            await asyncio.sleep(10)
        yield Piece(f"{model}-1 ", 0.0)
        if model == "late":
            raise InferenceError("the model server died")
        yield Piece(f"{model}-2", 0.0)

    async def embed(self, texts: list[str]) -> Any:  # the output check's
        return [[0.0] * 384 for _ in texts]


class Events(PendingEvents):  # the gate (wait_open) is the real, always-open one
    def __init__(self) -> None:
        super().__init__(publisher=None)  # type: ignore[arg-type]  # recorded, not published
        self.added: list[tuple[str, dict[str, Any]]] = []

    def track(self, fut: Any) -> None:
        return None

    async def add(self, topic: str, record: dict[str, Any], key: str | None = None) -> None:
        self.added.append((topic, record))

    async def settle(self) -> None:
        return None


def _model(name: str) -> Any:
    return SimpleNamespace(id=f"m-{name}", template="raw", triton_stream=name, cost=lambda p, c: 0.0)


async def _run(*names: str) -> tuple[Any, Events, list[str], Triton]:
    ended: list[str] = []

    async def finish_with_error(request: Any, message: str, **kwargs: Any) -> None:
        ended.append(message)

    async def noop(*args: Any, **kwargs: Any) -> Any:
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    triton = Triton()
    deps: Any = SimpleNamespace(
        producer=SimpleNamespace(send=noop), triton=triton, serde=SimpleNamespace(encode=lambda name, record: b"x"),
        ctx=SimpleNamespace(put=noop, cancelled=lambda rid: asyncio.sleep(0, False)), envelope=lambda env: env,
        inference_timeout_s=30.0, first_token_timeout_s=0.2, finish_with_error=finish_with_error,
        generate_before_verdict=False,
        safety=SimpleNamespace(judge=lambda vec: Judgement(0.0, False, "hate", 0.0, {})))
    deps.stream_chunk = partial(Deps.stream_chunk, deps)  # the real one, over these fakes
    events = Events()
    request = {"model": "m-a", "max_tokens": 4, "temperature": 0.0, "reply_topic": "replies", "reply_partition": 0,
               "envelope": {"request_id": "r1", "conversation_id": "c1"}, "messages": []}
    rc = RequestContext(request=request, plan="free", system_prompt="", started=0.0, events=events,  # type: ignore[arg-type]
                        policy=taxonomy.load().policy())
    models = [_model(n) for n in names]
    decision = Decision(models[0], "explicit", (models[0].id,), 0.0, tuple(models[1:]))
    gen = await inference._with_fallbacks(deps, rc, decision, Built([{"role": "user", "content": "q"}], 1), 1, None)
    return gen, events, ended, triton


def _decisions(events: Events) -> list[dict[str, Any]]:
    return [r for topic, r in events.added if topic == "routing.decisions"]


@pytest.mark.parametrize(("first", "why"), [("down", "model 'down' is not ready"),
                                            ("slow", "no first token within 0.2s")])
async def test_a_failure_or_silence_before_the_first_token_falls_back(first: str, why: str) -> None:
    gen, events, ended, _ = await _run(first, "ok")
    assert gen is not None and gen.model.id == "m-ok" and gen.text == "ok-1 ok-2" and not ended
    [decision] = _decisions(events)
    assert decision["chosen_model"] == "m-ok" and decision["reason"] == f"fallback from m-{first}: {why}"
    failed = [r for topic, r in events.added if topic == "inference.completed" and r["error"]]
    assert [r["model"] for r in failed] == [f"m-{first}"]  # the failed attempt is on the record too


async def test_fallbacks_are_tried_in_order_and_the_last_failure_ends_the_request() -> None:
    gen, events, ended, triton = await _run("down", "slow", "down")
    assert gen is None and ended == ["the model server failed during generation"]
    assert [d["chosen_model"] for d in _decisions(events)] == ["m-slow", "m-down"]
    assert triton.asked == ["down", "slow", "down"]


async def test_a_failure_after_the_first_token_does_not_fall_back() -> None:
    gen, events, ended, triton = await _run("late", "ok")
    assert gen is None and ended == ["the model server failed during generation"]
    assert triton.asked == ["late"] and not _decisions(events)
