"""Stage 5, inference: stream the answer from Triton to the caller's reply topic, token by token, then
record counts, time to first token, duration and cost. The caller leaving stops the generation."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka.errors import KafkaError

from conflux.errors import PublishError
from conflux.inference import InferenceError
from conflux.llm import Message, render_chatml
from streams.deps import Deps
from streams.once import Claim

log = logging.getLogger("conflux.streams")
SOURCE = "routing.decisions"
EVENT = "routing_decision"
CANCEL_CHECK_EVERY = 8  # tokens between looks at the cancel flag (a Redis round trip)
# The first piece goes out at once (time to first token); later pieces are sent together every FLUSH_S,
# so a fast model produces a few Kafka messages per answer rather than one per token.
FLUSH_S = 0.015


def render(template: str, messages: list[dict[str, Any]]) -> str:
    if template == "chatml":
        return render_chatml([Message(m["role"], m["content"]) for m in messages])
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


async def handle(deps: Deps, decision: dict[str, Any]) -> None:
    if not decision["chosen_model"]:
        return  # refused by routing, already answered
    env = decision["envelope"]
    rid = env["request_id"]
    claim = await deps.once.claim("gen", rid)
    if claim in (Claim.BUSY, Claim.DONE):
        return  # a replay of a generation that is running elsewhere or has finished
    try:
        ctx = await deps.ctx.get(rid, "request", "built", "prompt_tokens", "t0", "streamed")
        request, built = ctx["request"], ctx["built"]
        if ctx.get("streamed"):
            # The caller has seen part of this answer: its generator died (ORPHANED), or this worker is retrying
            # after the broker or Redis failed mid-answer. Starting again would splice two different answers
            # together: end it with an explicit error instead (the client retries).
            why = "a worker failure" if claim is Claim.ORPHANED else "a broker or Redis failure"
            await deps.finish_with_error(request, f"generation was interrupted by {why}; retry the request")
        else:
            await _generate(deps, env, decision, ctx, request, built)
    except BaseException:
        await deps.once.release("gen", rid)
        raise
    await deps.once.done("gen", rid)


async def _generate(deps: Deps, env: dict[str, Any], decision: dict[str, Any], ctx: dict[str, Any],
                    request: dict[str, Any], built: list[dict[str, Any]]) -> None:
    model = deps.models.get(decision["chosen_model"])
    prompt = render(model.template, built)
    max_tokens = int(request["max_tokens"] or 256)
    temperature = float(request["temperature"] or 0.0)
    # Recorded in parallel with the generation: its acknowledgement is not on the answer's critical path.
    requested = asyncio.ensure_future(deps.publisher.publish("inference.requests", {
        "envelope": deps.envelope(env), "model": model.id, "triton_model": model.triton_stream, "prompt": prompt,
        "max_tokens": max_tokens, "temperature": temperature, "stream": True, "reply_topic": request["reply_topic"],
        "reply_partition": request.get("reply_partition")}, key=env["conversation_id"]))

    t0 = time.perf_counter()
    ttft: float | None = None
    parts: list[str] = []
    error: str | None = None
    finish = "length"
    pending: list[Any] = []
    unsent: list[str] = []
    sent_chunks = 0
    last_flush = 0.0

    async def flush() -> None:
        nonlocal sent_chunks, last_flush
        if not unsent:
            return
        if sent_chunks == 0:
            # A replay after a crash must know the caller may have seen part of an answer, so the mark is
            # written *before* the first chunk can leave: written beside it, a kill -9 between the two let the
            # replay start the answer again behind the first piece. Dying after the mark but before the send
            # costs an explicit error, never a spliced answer.
            await deps.ctx.put(env["request_id"], streamed=True)
        chunk = {"envelope": deps.envelope(env), "sequence": sent_chunks, "text": "".join(unsent),
                 "is_final": False, "finish_reason": None, "error": None, "model": None,
                 "prompt_tokens": None, "completion_tokens": None}
        unsent.clear()
        sent_chunks += 1
        last_flush = time.perf_counter()
        value = deps.serde.encode("token_chunk", chunk)
        key = env["request_id"].encode()
        # Enqueued, not awaited one by one: ordering holds within the partition, latency stays low.
        pending.append(await deps.producer.send(request["reply_topic"], value=value, key=key,
                                                partition=request.get("reply_partition") or 0))
        pending.append(await deps.producer.send("inference.tokens", value=value, key=key))

    try:
        async with asyncio.timeout(deps.inference_timeout_s):
            async for piece in deps.triton.stream(model.triton_stream, prompt, max_tokens, temperature,
                                                  timeout_s=deps.inference_timeout_s):
                ttft = ttft if ttft is not None else (time.perf_counter() - t0) * 1000
                parts.append(piece.text)
                unsent.append(piece.text)
                if sent_chunks == 0 or time.perf_counter() - last_flush >= FLUSH_S:
                    await flush()
                if len(parts) % CANCEL_CHECK_EVERY == 0 and await deps.ctx.cancelled(env["request_id"]):
                    finish = "cancelled"
                    break
            else:
                finish = "length" if len(parts) >= max_tokens else "stop"
            await flush()
        try:
            await asyncio.gather(*pending, requested)
        except KafkaError as exc:  # an unacknowledged chunk: the broker is away, so the stage retries
            raise PublishError(f"token chunks of {env['request_id']} not acknowledged: {exc!r}") from exc
    except (InferenceError, TimeoutError) as exc:
        log.warning("inference of %s failed: %r", env["request_id"], exc)
        error = "the model server failed during generation" if isinstance(exc, InferenceError) else \
            f"inference timed out after {deps.inference_timeout_s:.0f}s"
    duration = (time.perf_counter() - t0) * 1000
    completion_tokens = len(parts)
    await deps.ctx.put(env["request_id"], text="".join(parts), completion_tokens=completion_tokens,
                       finish_reason=finish, started=ctx.get("t0"), chunks_sent=sent_chunks)
    await deps.publisher.publish("inference.completed", {
        "envelope": deps.envelope(env), "model": model.id, "triton_model": model.triton_stream,
        "prompt_tokens": int(ctx.get("prompt_tokens") or 0), "completion_tokens": completion_tokens,
        "ttft_ms": ttft, "duration_ms": duration,
        "cost_usd": model.cost(int(ctx.get("prompt_tokens") or 0), completion_tokens),
        "finish_reason": "error" if error else finish, "error": error}, key=env["conversation_id"])
    if error:
        await deps.finish_with_error(request, error, seq=sent_chunks)
