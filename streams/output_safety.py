"""Stage 6, output safety: check the generated answer, then end the caller's stream (final chunk with
usage, `content_filter` if blocked) and record the delivered response. Also stores the turn in session
memory for the conversation's next request."""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.exceptions import RedisError

from conflux.safety import check_rules
from streams.deps import Deps

log = logging.getLogger("conflux.streams")

SOURCE = "inference.completed"
EVENT = "inference_completed"


async def handle(deps: Deps, done: dict[str, Any]) -> None:
    if done["error"]:
        return  # the inference stage already ended the stream with the error
    t0 = time.perf_counter()
    env = done["envelope"]
    ctx = await deps.ctx.get(env["request_id"], "request", "text", "chunks", "chunks_sent", "started", "t0")
    async with deps.ending(env["request_id"]) as mine:
        if not mine:
            return  # a replay: this request was already ended
        await _end(deps, env, done, ctx, t0)
    await deps.ctx.drop(env["request_id"])


async def _end(deps: Deps, env: dict[str, Any], done: dict[str, Any], ctx: dict[str, Any], t0: float) -> None:
    request, text = ctx["request"], ctx.get("text", "")
    rules = check_rules(text)
    # Attack markup in an answer means an injection got through: block. Personal data is flagged.
    verdict = "BLOCK" if rules.jailbreak else ("FLAG" if rules.categories else "ALLOW")
    await deps.publisher.publish("safety.verdicts", {
        "envelope": deps.envelope(env), "stage": "OUTPUT", "verdict": verdict, "categories": list(rules.categories),
        "reasons": list(rules.reasons), "score": None, "checker": "rules",
        "latency_ms": (time.perf_counter() - t0) * 1000}, key=env["conversation_id"])
    finish = "content_filter" if verdict == "BLOCK" else done["finish_reason"]
    chunks = ctx.get("chunks") or []
    await deps.reply_final(request, {
        "envelope": deps.envelope(env), "sequence": int(ctx.get("chunks_sent", 0)), "text": "", "is_final": True,
        "finish_reason": finish, "error": None, "model": done["model"], "prompt_tokens": done["prompt_tokens"],
        "completion_tokens": done["completion_tokens"], "citations": [c["chunk_id"] for c in chunks]})
    started = ctx.get("started") or ctx.get("t0") or time.time()
    await deps.publisher.publish("chat.responses", {
        "envelope": deps.envelope(env), "model": done["model"], "content": "" if verdict == "BLOCK" else text,
        "finish_reason": finish, "blocked": verdict == "BLOCK", "error": None,
        "prompt_tokens": done["prompt_tokens"], "completion_tokens": done["completion_tokens"],
        "citations": [c["chunk_id"] for c in chunks], "latency_ms": (time.time() - float(started)) * 1000},
        key=env["conversation_id"])
    last_user = next((m["content"] for m in reversed(request["messages"]) if m["role"] == "user"), "")
    if verdict != "BLOCK":
        try:
            await deps.ctx.remember(env["tenant_id"], env["conversation_id"],
                                    [{"role": "user", "content": last_user}, {"role": "assistant", "content": text}])
        except RedisError as exc:  # memory fails open: the answer is already delivered, only the turn is lost
            deps.metrics.inc("memory_unavailable_total", help_text="memory reads or writes skipped")
            log.warning("turn of %s not remembered: %r", env["request_id"], exc)
