"""The chat pipeline: one request from `chat.requests` through every stage, in this worker's process.

The order of the chain, in one place:

    input safety ─────────────────────────────────┐ side by side (parallel rails): nothing of the answer, neither
    retrieval ─► prompt build (+ session memory)  │ its events nor a token, leaves before the input verdict
    ─► routing ─► inference (held at the gate) ───┘ allows it, and a block cancels the answer
    ─► (streams to the caller) ─► output safety (ends the request) ─► quality (scores it)
                   └ with `server_tools`: the agent loop (streams/agent.py) runs the built-in tools the model
                     calls and generates again, inside the inference stage; such a request waits for the
                     verdict before routing

Each stage is a module with one job and publishes its event to its own topic, as when each stage was an agent
of its own; those publishes are not awaited one by one but acknowledged together (PendingEvents) before the
request's final chunk leaves and before the pipeline returns (so before Faust can commit the input offset).
The request crosses Kafka twice on its critical path: in on chat.requests, out on the edge's reply topic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from conflux import taxonomy
from conflux.kafka import PendingEvents
from streams import inference, input_safety, output_safety, prompt_build, quality, retrieval, routing_stage
from streams.deps import Deps
from streams.ending import Ending
from streams.request import Refused, RequestContext, gated

SOURCE = "chat.requests"
INTERRUPTED = "generation was interrupted by a worker failure; retry the request"
EVENT = "prompt_submitted"
T = TypeVar("T")
log = logging.getLogger("conflux.streams")


async def handle(deps: Deps, request: dict[str, Any]) -> None:
    env = request["envelope"]
    read_memory = prompt_build.uses_memory(request)
    async with deps.redis.pipeline(transaction=False) as pipe:  # one round trip: the end mark, tenant, memory
        pipe.get(deps.once.key("end", env["request_id"]))
        pipe.hgetall(f"conflux:tenant:{env['tenant_id']}")
        if read_memory:
            pipe.lrange(deps.ctx.memory_key(env["tenant_id"], env["conversation_id"]), -prompt_build.MEMORY_TURNS, -1)
        # Errors come back in place: memory fails open (prompt_build.recall), the other two do not.
        end, tenant, *memory = await pipe.execute(raise_on_error=False)
    for reply in (end, tenant):
        if isinstance(reply, Exception):
            raise reply
    if end in (b"done", "done"):
        return  # a replay (after a worker failed over) of a request that has its answer
    if end is not None:
        # A replay of a request whose end had begun: its holder is waited for if alive, and if it died, the
        # ending it recorded is completed. Nothing of the request runs again (its budget, for one, is spent).
        await deps.finish_with_error(request, INTERRUPTED)
        return
    if input_safety.expired(deps, request):
        await _expire(deps, request)
        return
    rc = RequestContext(request=request, plan=(tenant.get(b"plan") or b"free").decode(),
                        system_prompt=(tenant.get(b"system_prompt") or b"").decode(), started=time.time(),
                        events=PendingEvents(deps.publisher), policy=taxonomy.tenant_policy(env["tenant_id"],
                                                                    tenant.get(b"safety_policy")),
                        fetch_allow=tuple(json.loads(tenant.get(b"fetch_allow") or b"[]")),
                        docs_version=tenant.get(b"docs_version"), memory=memory[0] if memory else None)

    if await _rails(deps, rc) == "BLOCK":
        await deps.end_request(request, text=input_safety.REFUSAL, finish_reason="content_filter", blocked=True,
                               model=request["model"], latency_ms=(time.time() - rc.started) * 1000,
                               events=rc.events)
        return
    await rc.events.settle()


async def _rails(deps: Deps, rc: RequestContext) -> str:
    """Input safety beside the answer (parallel rails); the input verdict. The answer runs on a gated view of
    the request: its events and output wait at the gate until the verdict allows, and a block shuts the gate
    and cancels the answer wherever it is (its refusal is the caller's to send). A failure of either rail before
    the verdict stops the other and is raised as itself, so that the agent's retry and dead-letter policy sees
    its type."""
    early, gate = gated(rc)
    verdict = asyncio.ensure_future(_stage(deps, "input_safety", input_safety.check(deps, rc)))
    answer = asyncio.ensure_future(_answer(deps, early))
    try:
        await asyncio.wait({verdict, answer}, return_when=asyncio.FIRST_COMPLETED)
        if answer.done() and not verdict.done() and answer.exception() is not None:
            raise answer.exception()  # type: ignore[misc]
        if await verdict == "BLOCK":
            gate.shut()
            answer.cancel()
            await asyncio.wait({answer})
            if not answer.cancelled() and not isinstance(failed := answer.exception(), Refused | None):
                log.warning("%s: the answer of a refused request failed as it was dropped: %r", rc.request_id,
                            failed)
            return "BLOCK"
        await gate.release()
        await answer
        return str(verdict.result())
    finally:
        gate.shut()  # no verdict allowed it (a failure, or the worker stopping): nothing of the answer may leave
        for rail in (verdict, answer):
            rail.cancel()
        await asyncio.wait({verdict, answer})


async def _answer(deps: Deps, rc: RequestContext) -> None:
    """Retrieval and prompt build, routing, inference, output safety and quality: the request's answer, made
    while its input verdict may still be pending (`rc` is the gated view). A request offered the worker's
    built-in tools waits for the verdict before routing: those tools act (fetch a page, query the metrics) as
    the answer is made, and a refused prompt must not make them act."""
    chunks, memory = await asyncio.gather(_stage(deps, "retrieval", retrieval.retrieve(deps, rc)),
                                          prompt_build.recall(deps, rc))
    built = await _stage(deps, "prompt_build", prompt_build.build(deps, rc, memory, chunks))
    if rc.guide is not None and rc.guide.server:
        await rc.events.wait_open()
    if built.too_long:
        await deps.finish_with_error(rc.request, built.too_long, finish_reason="context_length_exceeded",
                                     events=rc.events)
        return
    decision = await _stage(deps, "routing", routing_stage.choose(deps, rc, built))
    if decision is None:
        return  # refused, and answered with the refusal's code
    if rc.request["model"] == "auto":
        built = prompt_build.counted_for(deps, built, decision.model)
    generated = await _stage(deps, "inference", inference.generate(deps, rc, decision, built))
    if generated is None:
        return  # ended by inference (an error), or a replay of a generation that is not this worker's
    delivered = await _stage(deps, "output_safety", output_safety.finish(deps, rc, built, generated))
    if delivered is not None:  # the caller has its answer: scoring it adds nothing to its wait
        await _stage(deps, "quality", quality.record(deps, rc, built, generated, delivered))


async def _stage(deps: Deps, name: str, work: Awaitable[T]) -> T:
    """One stage's span in the request's trace, and its count and wall time in the worker's metrics (`make
    bench` reports each stage's share from them)."""
    t0 = time.perf_counter()
    with deps.tracer.start_as_current_span(name):
        result = await work
    deps.metrics.inc("events_processed_total", help_text="requests through a stage", stage=name)
    deps.metrics.inc("stage_seconds_total", time.perf_counter() - t0,
                     help_text="wall time spent in a stage (inference: until the answer is streamed)", stage=name)
    return result


async def _expire(deps: Deps, request: dict[str, Any]) -> None:
    """Older than any edge waits for: recorded as expired, with no answer to send."""
    env = request["envelope"]
    await deps.end(request, Ending(key=env["conversation_id"], events=[("chat.responses", {
        "envelope": deps.envelope(env), "model": request["model"], "content": "", "finish_reason": "expired",
        "blocked": False, "error": "expired: the caller stopped waiting before the request was processed",
        "prompt_tokens": 0, "completion_tokens": 0, "citations": [], "latency_ms": 0.0})]))
