"""Stage 3, prompt build: tenant system prompt, session memory, retrieved context and the conversation,
truncated to fit the model's context window as counted by the model's own tokenizer."""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError

from conflux.llm import Message, render_chatml
from streams.deps import Deps

SOURCE = "retrieval.completed"
EVENT = "retrieval_completed"
MEMORY_TURNS = 12
log = logging.getLogger("conflux.streams")


def _context_block(chunks: list[dict[str, Any]]) -> str:
    lines = [f"[{i + 1}] ({c['source'] or c['document_id']}) {c['text']}" for i, c in enumerate(chunks)]
    return "Use these documents when they help, citing them as [n]:\n" + "\n".join(lines)


def build_messages(system_prompt: str, memory: list[dict[str, str]], chunks: list[dict[str, Any]],
                   conversation: list[dict[str, Any]], budget: int, count: Any) -> tuple[list[Message], bool]:
    """The message list, oldest memory and lowest-ranked context dropped first until it fits `budget`."""
    def assemble(mem: list[dict[str, str]], ctx: list[dict[str, Any]]) -> list[Message]:
        system = [p for p in (system_prompt, _context_block(ctx) if ctx else "") if p]
        msgs = [Message("system", "\n\n".join(system))] if system else []
        msgs += [Message(t["role"], t["content"]) for t in mem]
        msgs += [Message(m["role"], m["content"]) for m in conversation]
        return msgs

    mem, ctx = list(memory), list(chunks)
    truncated = False
    while True:
        msgs = assemble(mem, ctx)
        if count(render_chatml(msgs)) <= budget:
            return msgs, truncated
        truncated = True
        if mem:
            mem.pop(0)
        elif ctx:
            ctx.pop()
        elif len(conversation) > 1:
            conversation = conversation[1:]
        else:  # a single message longer than the window: keep its end, which holds the question
            last = conversation[0]
            conversation = [{**last, "content": last["content"][-max(200, len(last["content"]) // 2):]}]


async def recall(deps: Deps, env: dict[str, Any]) -> list[dict[str, str]]:
    """Earlier turns; memory fails open: without Redis the prompt is built without them (memory_turns=0)."""
    try:
        return await deps.ctx.memory(env["tenant_id"], env["conversation_id"], MEMORY_TURNS)
    except RedisError as exc:
        deps.metrics.inc("memory_unavailable_total", help_text="memory reads or writes skipped")
        log.warning("session memory of %s unavailable: %r", env["request_id"], exc)
        return []


async def handle(deps: Deps, retrieval: dict[str, Any]) -> None:
    env = retrieval["envelope"]
    ctx = await deps.ctx.get(env["request_id"], "request", "plan", "system_prompt")
    request = ctx["request"]
    system_prompt = ctx.get("system_prompt", "")
    # A client that sends earlier assistant turns manages its own history; memory is for those that don't.
    own_history = any(m["role"] == "assistant" for m in request["messages"])
    memory = [] if own_history else await recall(deps, env)
    plan = deps.models.plan(ctx.get("plan", "free"))
    if request["model"] != "auto":
        window = deps.models.get(request["model"]).context_length
    else:  # routing comes next: fit the smallest window the plan could be routed to
        window = min(m.context_length for m in deps.models.models if m.quality > 0 and deps.models.allowed(m, plan))
    budget = window - int(request["max_tokens"] or 256)
    msgs, truncated = build_messages(system_prompt, memory, retrieval["chunks"], request["messages"], budget,
                                     deps.tokenizer.count)
    prompt_tokens = deps.tokenizer.count(render_chatml(msgs))
    built = [{"role": m.role, "content": m.content, "name": None} for m in msgs]
    await deps.ctx.put(env["request_id"], built=built, prompt_tokens=prompt_tokens)
    await deps.publisher.publish("prompt.built", {
        "envelope": deps.envelope(env), "messages": built, "prompt_tokens": prompt_tokens, "truncated": truncated,
        "memory_turns": len(memory), "context_chunk_ids": [c["chunk_id"] for c in retrieval["chunks"]]},
        key=env["conversation_id"])
