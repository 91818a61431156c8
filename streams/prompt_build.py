"""Prompt build: tenant system prompt, session memory, retrieved context and the conversation,
truncated to fit the model's context window as counted by the model's own tokenizer."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

from redis.exceptions import RedisError

from conflux import grounding
from conflux.errors import ConfluxError
from conflux.llm import DEFAULT_TOKENIZER, Message, render_chatml
from conflux.models import ModelSpec
from streams import tools
from streams.deps import Deps
from streams.request import RequestContext

MEMORY_TURNS = 12
log = logging.getLogger("conflux.streams")


def _with_sources(conversation: list[dict[str, Any]], chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation with its newest user turn laid out over the sources (conflux/grounding.py): the sources
    sit next to the question they serve, numbered, with the question last."""
    last = next((i for i in range(len(conversation) - 1, -1, -1) if conversation[i]["role"] == "user"), None)
    if not chunks or last is None:
        return conversation
    turn = conversation[last]
    return [*conversation[:last], {**turn, "content": grounding.layout(chunks, turn["content"])},
            *conversation[last + 1:]]


class PromptTooLong(ConfluxError):
    """What cannot be dropped (the system prompt with its tool and format instructions, and the end of the newest
    message) does not fit the model's window."""


def build_messages(system_prompt: str, memory: list[dict[str, str]], chunks: list[dict[str, Any]],
                   conversation: list[dict[str, Any]], budget: int, count: Any,
                   template: str = "chatml") -> tuple[list[Message], bool, int, list[dict[str, Any]]]:
    """The message list, oldest memory and lowest-ranked context dropped first until it fits `budget`, whether
    anything was dropped, and its size in tokens; PromptTooLong when even the least that can be sent does not.
    The sources kept are the first ones of `chunks` (the lowest-ranked go first), so their numbers [n] in the
    prompt are their positions in `chunks`."""
    def assemble(mem: list[dict[str, str]], ctx: list[dict[str, Any]]) -> list[Message]:
        msgs = [Message("system", system_prompt)] if system_prompt else []
        msgs += [Message(t["role"], t["content"]) for t in mem]
        msgs += [Message(m["role"], m["content"]) for m in _with_sources(conversation, ctx)]
        return msgs

    mem, ctx = list(memory), list(chunks)
    truncated = False
    while True:
        msgs = assemble(mem, ctx)
        tokens = count(render_chatml(msgs, template=template))
        if tokens <= budget:
            return msgs, truncated, tokens, ctx
        truncated = True
        if mem:
            mem.pop(0)
        elif ctx:
            ctx.pop()
        elif len(conversation) > 1:
            conversation = conversation[1:]
        elif len(conversation[0]["content"]) > 200:  # a message longer than the window: keep its end (the question)
            last = conversation[0]
            conversation = [{**last, "content": last["content"][-max(200, len(last["content"]) // 2):]}]
        else:
            raise PromptTooLong(f"the prompt needs {tokens} tokens even with the conversation cut to its newest "
                                f"message's end (the system prompt, tools and response format stay whole); "
                                f"this request leaves {budget} for it")


@dataclass(frozen=True)
class Built:
    messages: list[dict[str, Any]]
    prompt_tokens: int
    too_long: str | None = None  # why no prompt fits (the request then ends with this error)
    sources: tuple[dict[str, Any], ...] = ()  # the retrieved chunks in the prompt, numbered [1], [2]... in order


def uses_memory(request: dict[str, Any]) -> bool:
    """A client that sends earlier assistant turns manages its own history; memory is for those that don't."""
    return not any(m["role"] == "assistant" for m in request["messages"])


async def recall(deps: Deps, rc: RequestContext) -> list[dict[str, str]]:
    """Earlier turns, as read with the request (rc.memory) or read now; memory fails open: without Redis the
    prompt is built without them (memory_turns=0)."""
    if not uses_memory(rc.request):
        return []
    try:
        if isinstance(rc.memory, Exception):
            raise rc.memory
        if rc.memory is not None:
            return deps.ctx.turns(rc.memory)
        return await deps.ctx.memory(rc.env["tenant_id"], rc.env["conversation_id"], MEMORY_TURNS)
    except RedisError as exc:
        deps.metrics.inc("memory_unavailable_total", help_text="memory reads or writes skipped")
        log.warning("session memory of %s unavailable: %r", rc.request_id, exc)
        return []


def _chatml(model: ModelSpec | None) -> str:
    """The ChatML variant to count the prompt in: the model's own; the echo models' (plain) and a prompt built
    before `auto` chose are counted as SmolLM2 would read them."""
    return model.template if model and model.template.startswith("chatml") else "chatml"


def counted_for(deps: Deps, built: Built, model: ModelSpec) -> Built:
    """`built` with its size as `model` reads it. A prompt built for `auto` was counted as the default model reads
    it (routing had not chosen yet); usage and cost must be the chosen model's."""
    if model.tokenizer == DEFAULT_TOKENIZER and _chatml(model) == "chatml":
        return built
    msgs = [Message(m["role"], m["content"]) for m in built.messages]
    return replace(built, prompt_tokens=deps.tokenizer(model).count(render_chatml(msgs, template=_chatml(model))))


async def build(deps: Deps, rc: RequestContext, memory: list[dict[str, str]], chunks: list[dict[str, Any]]) -> Built:
    """The prompt for the model, recorded on prompt.built."""
    request = rc.request
    plan = deps.models.plan(rc.plan)
    model = None if request["model"] == "auto" else deps.models.get(request["model"])
    if model is not None:
        window = model.context_length
    else:  # routing comes next: fit the smallest window the plan could be routed to, counted by the default model
        window = min(m.context_length for m in deps.models.models if m.quality > 0 and deps.models.allowed(m, plan))
    guide = rc.guide
    system_prompt = "\n\n".join(p for p in (rc.system_prompt, guide.instructions if guide else "") if p)
    conversation = [dict(zip(("role", "content"), tools.render_message(m), strict=True)) for m in request["messages"]]
    try:
        msgs, truncated, prompt_tokens, kept = build_messages(system_prompt, memory, chunks, conversation,
                                                        window - rc.max_tokens, deps.tokenizer(model).count,
                                                        _chatml(model))
    except PromptTooLong as exc:
        return Built([], 0, str(exc))
    built = [{"role": m.role, "content": m.content, "name": None} for m in msgs]
    for m in tools.new_results(request["messages"]):  # the results of the calls the model made last turn
        await rc.events.add("tool.results", {"envelope": deps.envelope(rc.env), "call_id": m.get("tool_call_id") or "",
                                             "content": m["content"]}, key=rc.key)
    await rc.events.add("prompt.built", {
        "envelope": deps.envelope(rc.env), "messages": built, "prompt_tokens": prompt_tokens, "truncated": truncated,
        "memory_turns": len(memory), "context_chunk_ids": [c["chunk_id"] for c in kept]}, key=rc.key)
    return Built(built, prompt_tokens, sources=tuple(kept))
