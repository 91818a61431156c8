"""Output safety, end of the request: record the output verdict (reached on the stream by
streams/output_guard.py, before any text left), end the caller's stream (final chunk with usage,
`content_filter` if the answer was cut) and record the delivered response. Also stores the turn in session
memory for the conversation's next request."""

from __future__ import annotations

import logging
import time

from redis.exceptions import RedisError

from conflux import grounding
from streams.deps import Deps
from streams.ending import Ending
from streams.inference import Generated
from streams.once import expires_at
from streams.prompt_build import Built
from streams.request import RequestContext

log = logging.getLogger("conflux.streams")


async def finish(deps: Deps, rc: RequestContext, built: Built, gen: Generated) -> str | None:
    """The finish reason the caller was sent, or None when another worker ends this request (a takeover or a
    replay) or the answer was blocked: then there is no delivered answer of this worker's to score."""
    t0 = time.perf_counter()
    env = rc.env
    out = gen.output
    verdict = out.verdict
    finish_reason = "content_filter" if verdict == "BLOCK" else gen.finish_reason
    # The sources the answer used (cited as [n], or supporting it uncited), not all it was given.
    citations = [built.sources[i]["chunk_id"] for i in grounding.used(gen.text, built.sources)]
    # Generated tokens are charged however the answer ended: whole, cut by the token limit, cancelled by the
    # caller, or blocked by the output check (the model did the work the request asked for).
    cost = gen.model.cost_micros(gen.prompt_tokens, gen.completion_tokens)
    ending = Ending(key=rc.key, events=[
        ("safety.verdicts", {
            "envelope": deps.envelope(env), "stage": "OUTPUT", "verdict": verdict, "categories": out.categories,
            "reasons": [*out.reasons, f"{gen.output_checks} checks on the stream"], "score": out.score,
            "checker": "rules+safety_head/minilm_embed (stream)",
            "latency_ms": (time.perf_counter() - t0) * 1000}),
        ("chat.responses", {
            "envelope": deps.envelope(env), "model": gen.model.id,
            "content": "" if verdict == "BLOCK" else gen.text, "finish_reason": finish_reason,
            "blocked": verdict == "BLOCK", "error": None, "prompt_tokens": gen.prompt_tokens,
            "completion_tokens": gen.completion_tokens, "citations": citations,
            "latency_ms": (time.time() - rc.started) * 1000, "cost_micros": cost,
            "key_id": rc.request.get("key_id") or ""})],
        final={"envelope": deps.envelope(env), "sequence": gen.chunks_sent, "text": "", "is_final": True,
               "finish_reason": finish_reason, "error": None, "model": gen.model.id,
               "prompt_tokens": gen.prompt_tokens, "completion_tokens": gen.completion_tokens,
               "citations": citations, "epoch": gen.epoch},
        micros=cost, tokens=gen.prompt_tokens + gen.completion_tokens)
    if not await deps.end(rc.request, ending, rc.events, expires_at(rc.request, deps.inference_timeout_s),
                          epoch=gen.epoch):
        return None  # a replay (this request was already ended), or a takeover (another worker ends it)
    # Of n choices, only the first becomes the conversation's turn: the others are alternatives the client
    # may pick from, and memory holds one answer per turn.
    if verdict != "BLOCK" and not rc.request.get("choice"):
        try:
            await deps.ctx.remember(env["tenant_id"], env["conversation_id"], [
                {"role": "user", "content": rc.newest_user_message}, {"role": "assistant", "content": gen.text}])
        except RedisError as exc:  # memory fails open: the answer is already delivered, only the turn is lost
            deps.metrics.inc("memory_unavailable_total", help_text="memory reads or writes skipped")
            log.warning("turn of %s not remembered: %r", rc.request_id, exc)
    return None if verdict == "BLOCK" else finish_reason
