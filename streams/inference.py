"""Inference: stream the answer from Triton to the caller's reply topic, each piece released once the output
check covering it has passed (streams/output_guard.py), then record counts, time to first token, duration and
cost. The caller leaving, or an output check that blocks, stops the generation.

A model that fails, or stays silent for first_token_timeout_s, before its first token hands the request to the
routing decision's next fallback (recorded on routing.decisions, with why); after the first token a failure
ends the request with an explicit error, since the caller has seen part of the answer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from conflux.inference import InferenceError, Piece
from conflux.llm import Message, render_chatml
from conflux.models import ModelSpec
from conflux.routing import Decision
from model_runtime.llama import Sampling
from streams import agent, output_guard, routing_stage, tools
from streams.context import CancelWatch
from streams.deps import Deps
from streams.logprobs import AlignedLogprobs
from streams.once import Claim, expires_at
from streams.output_guard import OutputVerdict, StreamGuard
from streams.prompt_build import Built
from streams.request import RequestContext
from streams.stop_sequences import StopScanner

log = logging.getLogger("conflux.streams")
FLUSH_S = 0.015  # the least time between two chunks after the first


class NoFirstToken(InferenceError):
    """The model failed or stayed silent before its first token, and a fallback may answer instead."""


@dataclass(frozen=True)
class Generated:
    model: ModelSpec  # the model that answered (the decision's, or a fallback)
    text: str
    completion_tokens: int
    finish_reason: str
    chunks_sent: int
    epoch: int
    output: OutputVerdict  # the output check's verdict on the whole answer (or on the window that blocked it)
    output_checks: int  # output checks run on the stream
    tool_calls: list[tools.Call] = field(default_factory=list)
    prompt_tokens: int = 0  # what the answer read: its prompt, or every step's prompt in an agent loop
    server_calls: list[tools.Call] = field(default_factory=list)  # calls of built-in tools, for the worker to run


def requested(deps: Deps, rc: RequestContext, model: ModelSpec, prompt: str, temperature: float,
              sampling: Sampling, guide: tools.Guide | None, attempt: int = 0) -> dict[str, Any]:
    """The inference.requests event of one generation (a constrained output that fails its check has several)."""
    request = rc.request
    return {"envelope": deps.envelope(rc.env), "model": model.id, "triton_model": model.triton_stream,
            "prompt": prompt, "max_tokens": rc.max_tokens, "temperature": temperature, "stream": True,
            "reply_topic": request["reply_topic"], "reply_partition": request.get("reply_partition"),
            "top_p": sampling.top_p, "seed": sampling.seed, "presence_penalty": sampling.presence_penalty,
            "frequency_penalty": sampling.frequency_penalty, "stop": list(request.get("stop") or []),
            "guide_type": guide.guide_type if guide else None, "guide": guide.guide if guide else None,
            "attempt": attempt, "top_logprobs": request.get("top_logprobs")}


def render(template: str, messages: list[dict[str, Any]]) -> str:
    if template.startswith("chatml"):
        return render_chatml([Message(m["role"], m["content"]) for m in messages], template=template)
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


async def generate(deps: Deps, rc: RequestContext, decision: Decision, built: Built) -> Generated | None:
    """The answer, streamed to the caller, once across workers. None when there is nothing more for this
    worker to do: a replay of a generation that runs elsewhere or has ended, or a request ended here with an
    explicit error (the model failed, or a takeover found the caller had seen part of an earlier answer)."""
    rid = rc.request_id
    claim, epoch, streamed = await deps.once.claim_generation(rid, deps.ctx.key(rid),
                                                              expires_at(rc.request, deps.inference_timeout_s))
    if claim in (Claim.BUSY, Claim.DONE):
        return None
    try:
        if streamed:
            # The caller has seen part of this answer: its generator died or stalled (ORPHANED), or this worker
            # is retrying after the broker or Redis failed mid-answer. Starting again would splice two answers
            # together: end it with an explicit error instead (the client retries).
            why = "a worker failure" if claim is Claim.ORPHANED else "a broker or Redis failure"
            await deps.finish_with_error(rc.request, f"generation was interrupted by {why}; retry the request",
                                         events=rc.events, epoch=epoch)
            result = None
        else:
            result = await _with_agent(deps, rc, decision, built, epoch)
    except BaseException:
        await deps.once.release("gen", rid)
        raise
    # The claim stays held (by this live worker) until the request ends and drops it: if this worker dies in
    # between, a replay finds it orphaned and, the caller having seen the answer, ends it with an error.
    return result


async def _with_agent(deps: Deps, rc: RequestContext, decision: Decision, built: Built,
                      epoch: int) -> Generated | None:
    """The answer; when the model calls built-in tools (streams/server_tools), the worker runs them, shows the
    caller each step, and generates again with their results, up to agent.MAX_STEPS times (the last time
    without the built-in tools, so it answers). Usage and cost count every step."""
    guide = rc.guide
    result = await _with_fallbacks(deps, rc, decision, built, epoch, guide)
    prompt_tokens, completion_tokens = built.prompt_tokens, 0
    for step in range(1, agent.MAX_STEPS + 1):
        if result is None or not result.server_calls:
            break
        completion_tokens += result.completion_tokens
        window = result.model.context_length - rc.max_tokens
        built, seq = await agent.run_step(deps, rc, built, result, epoch, step, window)
        prompt_tokens += built.prompt_tokens
        guide = tools.plan(rc.request, with_server=step < agent.MAX_STEPS, choice="auto")
        result = await _with_fallbacks(deps, rc, decision, built, epoch, guide, seq)
    if result is None:
        return None
    return replace(result, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens + result.completion_tokens)


async def _with_fallbacks(deps: Deps, rc: RequestContext, decision: Decision, built: Built, epoch: int,
                          guide: tools.Guide | None, seq0: int = 0) -> Generated | None:
    """The decision's model, then each fallback in turn while the one before failed before its first token."""
    models = (decision.model, *decision.fallbacks)
    for i, model in enumerate(models):
        last = i == len(models) - 1
        try:
            return await _generate(deps, rc, model, built, epoch, guide, seq0,
                                   None if last else deps.first_token_timeout_s)
        except NoFirstToken as exc:
            log.warning("%s: %s failed before its first token (%s); falling back to %s", rc.request_id, model.id,
                        exc, models[i + 1].id)
            await routing_stage.record(deps, rc, replace(
                decision, model=models[i + 1], reason=f"fallback from {model.id}: {exc}",
                candidates=tuple(m.id for m in models[i + 1:]), fallbacks=models[i + 2:],
                estimated_cost_usd=models[i + 1].cost(built.prompt_tokens, rc.max_tokens)))
    raise AssertionError("unreachable: the last model never raises NoFirstToken")


def _first_within(pieces: AsyncGenerator[Piece], seconds: float | None) -> AsyncIterator[Piece]:
    """The stream, failing with NoFirstToken if its first piece takes longer than `seconds`; the stream itself
    when there is no limit (no extra hop per piece)."""
    return pieces if seconds is None else _bounded(pieces, seconds)


async def _bounded(pieces: AsyncGenerator[Piece], seconds: float) -> AsyncIterator[Piece]:
    try:
        try:
            first = await asyncio.wait_for(anext(pieces), seconds)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise NoFirstToken(f"no first token within {seconds:g}s") from None
        yield first
        async for piece in pieces:
            yield piece
    finally:
        await pieces.aclose()  # leaving early cancels the generation in Triton now, not at garbage collection


async def _generate(deps: Deps, rc: RequestContext, model: ModelSpec, built: Built, epoch: int,
                    guide: tools.Guide | None, seq0: int = 0, first_token_s: float | None = None) -> Generated | None:
    """One model's answer under `guide` (the request's, or an agent step's), its chunks numbered from `seq0`.
    With first_token_s (a fallback exists), a failure or silence before the first token raises NoFirstToken
    instead of ending the request."""
    request = rc.request
    prompt = render(model.template, built.messages)
    # OpenAI's default temperature is 1; the edge writes it, and an older record without one means the same.
    temperature = 1.0 if request["temperature"] is None else float(request["temperature"])
    sampling = Sampling.of(request)
    stop = list(request.get("stop") or [])
    top_logprobs = request.get("top_logprobs")
    await rc.events.add("inference.requests", requested(deps, rc, model, prompt, temperature, sampling, guide),
                        key=rc.key)
    if not deps.generate_before_verdict:
        await rc.events.wait_open()  # everything up to here ran beside the input verdict (Settings says why)

    t0 = time.perf_counter()
    ttft: float | None = None
    error: str | None = None
    finish = "length"
    # Text leaves only once an output check covering it has passed (streams/output_guard.py).
    guard = StreamGuard(output_guard.checker(deps, rc))
    parts = guard.pieces
    stops = StopScanner(stop)
    logprobs = AlignedLogprobs()
    generated = 0  # pieces from the model (what completion_tokens counts)
    released = 0
    sent_chunks = seq0
    last_flush = 0.0
    closing = False
    fell_back: InferenceError | None = None  # failed before the first token, and a fallback may answer

    async def flush() -> None:
        nonlocal released
        upto = guard.cleared
        if upto <= released:
            return
        text = "".join(parts[released:upto])
        released = upto
        await send(text)

    async def send(text: str, tool_calls: list[dict[str, Any]] | None = None) -> None:
        nonlocal sent_chunks, last_flush
        chunk = {"envelope": deps.envelope(rc.env), "sequence": sent_chunks, "text": text,
                 "is_final": False, "finish_reason": None, "error": None, "model": None,
                 "prompt_tokens": None, "completion_tokens": None, "epoch": epoch, "tool_calls": tool_calls or [],
                 "logprobs": logprobs.take(len(text))}
        sent_chunks += 1
        last_flush = time.perf_counter()
        await deps.stream_chunk(request, chunk, rc.events)

    async def sender() -> None:
        """Sends what the checks clear as they clear it: the first piece at once (time to first token), later
        ones together at most every FLUSH_S, so a fast model makes a few Kafka messages per answer."""
        while not closing:
            await guard.progress.wait()
            guard.progress.clear()
            if closing or guard.stopped:
                return
            if sent_chunks and (wait := FLUSH_S - (time.perf_counter() - last_flush)) > 0:
                await asyncio.sleep(wait)
            await flush()

    calls: list[tools.Call] = []

    async def stream_output(guide: tools.Guide | None = None) -> None:
        """Free text, or a constrained output the grammar alone holds (guide.streamed): each piece into the
        output guard as it comes; tool calls straight to the caller (they are not text the guard reads)."""
        nonlocal ttft, generated, finish, calls
        call_stream = tools.CallStream(guide) if guide is not None and guide.kind == "tools" else None
        pieces: list[str] = []
        watch = CancelWatch(deps.ctx, rc.request_id)
        async for piece in _first_within(deps.triton.stream(
                model.triton_stream, prompt, rc.max_tokens, temperature, timeout_s=deps.inference_timeout_s,
                sampling=sampling, top_logprobs=top_logprobs,
                guide=(guide.guide_type, guide.guide) if guide else None), first_token_s):
            ttft = ttft if ttft is not None else (time.perf_counter() - t0) * 1000
            generated += 1
            pieces.append(piece.text)
            text = piece.text
            if call_stream is not None and not call_stream.text_mode:
                if deltas := call_stream.feed(piece.text):
                    await send("", deltas)
                text = call_stream.take_text() if call_stream.text_mode else ""
            logprobs.add(len(text), piece.logprobs)
            if text and (text := stops.feed(text)):
                guard.add(text)
            if stops.stopped:
                finish = "stop"  # leaving the loop cancels the generation in Triton
                return
            if guard.stopped:
                return
            if await watch.cancelled():
                finish = "cancelled"
                return
        finish = "length" if generated >= rc.max_tokens else "stop"
        if tail := stops.flush():
            guard.add(tail)
        if call_stream is not None and not call_stream.text_mode:
            calls = call_stream.calls()  # cut short by the token limit: as they stand (finish "length")
            finish = "tool_calls" if finish == "stop" else finish
        if guide is not None and finish in ("stop", "tool_calls"):
            # The grammar held the schema; a failure here breaks that promise, and ends the request.
            outcome = tools.check(guide, "".join(pieces))
            if outcome.problem is not None:
                raise tools.ConstraintError(f"the streamed output did not pass its schema: {outcome.problem}")

    async def constrained(guide: tools.Guide) -> None:
        """Tools or response_format: the whole output first (it is checked before any of it leaves), then its
        text into the output guard; its tool calls are sent after the text."""
        nonlocal ttft, generated, finish, calls
        out = await _guided(deps, rc, model, prompt, temperature, sampling, guide, top_logprobs, first_token_s)
        ttft, generated, finish, calls = out.ttft, out.generated, out.finish, out.calls
        if out.text:
            logprobs.add(len(out.text), out.logprobs)
            if text := stops.feed(out.text) + ("" if stops.stopped else stops.flush()):
                guard.add(text)

    sending = asyncio.ensure_future(sender())
    try:
        async with asyncio.timeout(deps.inference_timeout_s):
            await (stream_output(guide) if guide is None or guide.streamed else constrained(guide))
            await guard.finish()
    except (InferenceError, TimeoutError, tools.ConstraintError) as exc:
        log.warning("inference of %s failed: %r", rc.request_id, exc)
        error = str(exc) if isinstance(exc, tools.ConstraintError) else \
            "the model server failed during generation" if isinstance(exc, InferenceError) else \
            f"inference timed out after {deps.inference_timeout_s:.0f}s"
        if first_token_s is not None and ttft is None and sent_chunks == 0 and isinstance(exc, InferenceError):
            fell_back = exc
    except asyncio.CancelledError:
        sending.cancel()  # it may wait at the gate of a request whose input verdict blocked it (parallel rails)
        raise
    finally:
        closing = True
        guard.progress.set()
        try:
            await sending
        finally:
            guard.cancel()
    if guard.blocked is not None:
        finish = "content_filter"
    elif guard.failed is not None and error is None:
        log.warning("output check of %s failed: %r", rc.request_id, guard.failed)
        error = "the output safety check failed; nothing unchecked was sent"
    await flush()  # what the checks cleared (on a block: everything before the window that tripped it)
    server = guide.server if guide is not None else frozenset()
    server_calls = [c for c in calls if c.name in server] if finish == "tool_calls" else []
    if finish != "tool_calls":  # a call cut short is returned as it stands, but never one of a built-in tool
        calls = [c for c in calls if c.name not in server]
    if calls and error is None and guard.blocked is None:
        # A call to a built-in tool is the worker's to run (streams/agent.py): none of the step's calls go to
        # the caller then. Streamed calls left as they were generated.
        if not server_calls and (not guide or not guide.streamed):
            await send("", tools.deltas(calls))
        for i, c in enumerate(calls):
            await rc.events.add("tool.calls", {
                "envelope": deps.envelope(rc.env), "call_id": c.id, "index": i, "name": c.name,
                "arguments": c.arguments, "attempts": c.attempts, "finish_reason": finish,
                "server": c in server_calls}, key=rc.key)
    # An unacknowledged chunk means the broker is away: PublishError, and the pipeline retries.
    await rc.events.settle()
    duration = (time.perf_counter() - t0) * 1000
    await rc.events.add("inference.completed", {
        "envelope": deps.envelope(rc.env), "model": model.id, "triton_model": model.triton_stream,
        "prompt_tokens": built.prompt_tokens, "completion_tokens": generated, "ttft_ms": ttft,
        "duration_ms": duration, "cost_usd": model.cost(built.prompt_tokens, generated),
        "finish_reason": "error" if error else finish, "error": error}, key=rc.key)
    if fell_back is not None:
        raise NoFirstToken(str(fell_back) if isinstance(fell_back, NoFirstToken) else _why(fell_back))
    if error:
        await deps.finish_with_error(request, error, seq=sent_chunks, events=rc.events, epoch=epoch)
        return None
    output = guard.blocked or guard.last
    return Generated(model, "".join(parts), generated, finish, sent_chunks, epoch, output, guard.checks,
                     [] if server_calls else calls, built.prompt_tokens, server_calls)


def _why(exc: InferenceError) -> str:
    """A short reason for the routing event: the model server's own first line."""
    return str(exc).splitlines()[0][:200] or type(exc).__name__



@dataclass(frozen=True)
class GuidedOutput:
    text: str | None
    calls: list[tools.Call]
    generated: int
    finish: str
    ttft: float | None
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # of a text output's tokens, when asked


async def _guided(deps: Deps, rc: RequestContext, model: ModelSpec, prompt: str, temperature: float,
                  sampling: Sampling, guide: tools.Guide, top_logprobs: int | None = None,
                  first_token_s: float | None = None) -> GuidedOutput:
    """A constrained generation, checked (conflux/grammar.py) and generated again when the grammar could not
    hold everything the schema asks (a number's bounds, a format), up to MAX_ATTEMPTS; then ConstraintError.
    An output cut short by the token limit is returned as it stands, with finish "length"."""
    t0 = time.perf_counter()
    ttft: float | None = None
    problem = ""
    for attempt in range(tools.MAX_ATTEMPTS):
        if attempt:  # a given seed would give the same output again: move it
            sampling = replace(sampling, seed=None if sampling.seed is None else sampling.seed + attempt)
            await rc.events.add("inference.requests", requested(deps, rc, model, prompt, temperature, sampling,
                                                                guide, attempt), key=rc.key)
        pieces: list[str] = []
        entries: list[dict[str, Any]] = []
        watch = CancelWatch(deps.ctx, rc.request_id)
        async for piece in _first_within(deps.triton.stream(
                model.triton_stream, prompt, rc.max_tokens, temperature, timeout_s=deps.inference_timeout_s,
                sampling=sampling, guide=(guide.guide_type, guide.guide), top_logprobs=top_logprobs),
                first_token_s if ttft is None else None):
            ttft = ttft if ttft is not None else (time.perf_counter() - t0) * 1000
            pieces.append(piece.text)
            entries += piece.logprobs or []
            if await watch.cancelled():
                return GuidedOutput(None, [], len(pieces), "cancelled", ttft)
        text = "".join(pieces)
        if len(pieces) >= rc.max_tokens:
            calls = tools.partial_calls(guide, text) if guide.kind == "tools" else []
            return GuidedOutput(None if calls else text, calls, len(pieces), "length", ttft, entries)
        outcome = tools.check(guide, text)
        if outcome.problem is None:
            calls = [replace(c, attempts=attempt + 1) for c in outcome.calls]
            return GuidedOutput(outcome.text, calls, len(pieces), "tool_calls" if calls else "stop", ttft, entries)
        problem = outcome.problem
        log.info("constrained output of %s failed its check (attempt %d): %s", rc.request_id, attempt + 1, problem)
    raise tools.ConstraintError(f"the model's output did not pass its schema in {tools.MAX_ATTEMPTS} attempts: "
                                f"{problem}")
