"""The step kinds a workflow file may name (conflux/workflow_spec.py): what one step instance does with the run's
input and the outputs of the steps before it. No events here: the runner records every attempt.

- outline: the run's items (section headings): the caller's own, or the model's, as a JSON array held by the
  model's grammar when it has one. Checks the topic with input safety first (a verdict on safety.verdicts).
- retrieve: passages from the tenant's own documents for one item, to cite (injection attempts left out).
- generate: the step's prompt template filled in, and the model's text. After a fan-in the template may use
  the draft (every item's text under its heading).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from conflux import taxonomy
from conflux.errors import ConfluxError, VectorStoreError
from conflux.models import ModelSpec
from conflux.safety import check_rules
from conflux.safety_model import assess
from conflux.workflow_spec import StepSpec, Workflow
from conflux.workflow_store import RunState
from model_runtime.llama import Sampling
from streams.deps import Deps
from streams.inference import render

SYSTEM = "You are a careful writer of clear, factual articles."
PASSAGE_CHARS = 400  # of each passage, in a write prompt (the step's output keeps 1,000)
HEADING_CHARS = 80
PROGRESS_EVERY_S = 0.5


class StepFailed(ConfluxError):
    """A step could not produce its output; `retry` says whether another attempt may succeed."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


@dataclass
class StepResult:
    output: dict[str, Any]
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_micros: int = 0
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (topic, record) to publish


@dataclass(frozen=True)
class StepInput:
    wf: Workflow
    spec: StepSpec
    item: int | None
    run: RunState
    model: ModelSpec
    envelope: dict[str, Any]  # a fresh envelope of the run (for a safety verdict)
    # Holds a model call's worst case (micro-dollars, tokens) against the run's budgets before it is made;
    # raises StepFailed when a budget has no room. The runner settles the hold at the step's real cost.
    hold: Callable[[int, int], Awaitable[None]]
    # Reports the tokens a model call has written so far (what `conflux article` draws its bars from).
    progress: Callable[[int], Awaitable[None]]


async def run(deps: Deps, si: StepInput) -> StepResult:
    kind = si.spec.kind
    if kind == "outline":
        return await _outline(deps, si)
    if kind == "retrieve":
        return await _retrieve(deps, si)
    return await _generate(deps, si)


def _vars(si: StepInput) -> dict[str, Any]:
    inp = si.run.input
    out: dict[str, Any] = {"topic": inp["topic"], "audience": inp.get("audience") or "a general audience",
                           "sections": inp["sections"]}
    if si.item is not None:
        heads = sections_of(si.run, si.wf)
        out.update(section=heads[si.item], index=si.item + 1, passages=_passages(si.run, si.wf, si.item))
    return out


def sections_of(run: RunState, wf: Workflow) -> list[str]:
    return list(run.steps[wf.items_from]["output"]["sections"])


def _passages(run: RunState, wf: Workflow, item: int) -> str:
    found = passages_of(run, wf, item)
    if not found:
        return "(no sources found: write from general knowledge and cite nothing)"
    return "\n".join(f"[{n}] {p['text'][:PASSAGE_CHARS]}" for n, p in enumerate(found, 1))


def passages_of(run: RunState, wf: Workflow, item: int) -> list[dict[str, Any]]:
    """The passages of the retrieve steps this item's steps came after (the item's research)."""
    out: list[dict[str, Any]] = []
    for s in wf.steps:
        if s.kind == "retrieve" and s.foreach and (rec := run.steps.get(f"{s.id}.{item}")):
            out += rec["output"]["passages"]
    return out


async def _outline(deps: Deps, si: StepInput) -> StepResult:
    inp = si.run.input
    text = f"{inp['topic']}\n{inp.get('audience') or ''}".strip()
    t0 = time.perf_counter()
    raw_policy = await deps.redis.hget(f"conflux:tenant:{si.run.tenant_id}", "safety_policy")
    a = await assess(deps.triton, deps.safety, taxonomy.tenant_policy(si.run.tenant_id, raw_policy), text)
    verdict = ("safety.verdicts", {
        "envelope": si.envelope, "stage": "INPUT", "verdict": a.verdict, "categories": a.categories,
        "reasons": a.reasons, "score": a.model.p_unsafe, "checker": "rules+safety_head/minilm_embed",
        "latency_ms": (time.perf_counter() - t0) * 1000})
    if a.verdict == "BLOCK":
        raise StepFailed(f"the topic was refused by input safety ({', '.join(a.categories) or 'policy'})",
                         retry=False)
    if isinstance(inp["sections"], list):  # the caller's own headings: no model call
        return StepResult({"sections": inp["sections"], "source": "request"}, events=[verdict])
    n = int(inp["sections"])
    prompt = si.spec.prompt.format_map(_vars(si))
    guide = None
    if si.model.guided_decoding:
        schema = {"type": "array", "minItems": n, "maxItems": n,
                  "items": {"type": "string", "minLength": 3, "maxLength": HEADING_CHARS}}
        guide = ("json_schema", json.dumps(schema))
        prompt += f"\nAnswer with a JSON array of {n} strings only."
    result = await _complete(deps, si, prompt, si.spec.max_tokens, guide)
    heads = _headings(result.output["text"], n)
    # A model that gives fewer headings than asked (one without a grammar) is topped up with plain ones, and
    # the output says how many: a run of the right shape beats a failed run, and the record shows why.
    filled = [f"{inp['topic'][:HEADING_CHARS - 10].strip()}: part {i + 1}" for i in range(len(heads), n)]
    result.output = {"sections": heads + filled, "source": "model", "filled": len(filled)}
    result.events.insert(0, verdict)
    return result


def _headings(text: str, n: int) -> list[str]:
    try:
        parsed = json.loads(text)
        items = [str(x) for x in parsed] if isinstance(parsed, list) else []
    except ValueError:
        items = text.splitlines()
    out: list[str] = []
    for line in items:
        head = re.sub(r"^\s*(?:[-*#]+|\d+[.)])\s*", "", line).strip().strip('"').strip()[:HEADING_CHARS]
        if head and head.lower() not in {h.lower() for h in out}:
            out.append(head)
    return out[:n]


async def _retrieve(deps: Deps, si: StepInput) -> StepResult:
    assert si.item is not None
    heads = sections_of(si.run, si.wf)
    query = f"{si.run.input['topic']}: {heads[si.item]}"
    passages: list[dict[str, Any]] = []
    left_out = unrelated = 0
    if deps.vectors is not None:
        vector = [float(x) for x in (await deps.triton.embed([query]))[0]]
        try:
            # The tenant comes from the run, never from a prompt: the store filters on it.
            hits = await asyncio.to_thread(deps.vectors.search, deps.collection, si.run.tenant_id, vector,
                                           si.spec.top_k)
        except VectorStoreError:
            hits = []  # the tenant has no documents yet
        for h in hits:
            if check_rules(h.text).attack:  # retrieved text is data, never instructions
                left_out += 1
                continue
            if h.score < si.spec.min_score:
                unrelated += 1
                continue
            passages.append({"document_id": h.document_id, "chunk_id": h.chunk_id, "text": h.text[:1000],
                             "score": round(float(h.score), 4), "source": h.source or None})
    return StepResult({"query": query, "passages": passages, "left_out_as_injection": left_out,
                       "left_out_as_unrelated": unrelated})


def draft_of(run: RunState, wf: Workflow, spec: StepSpec) -> str:
    """Every item's text under its heading, from the per-item generate step this step came after."""
    heads = sections_of(run, wf)
    src = next(d for d in reversed(spec.after) if wf.by_id[d].foreach)
    return "\n\n".join(f"## {h}\n\n{run.steps[f'{src}.{i}']['output']['text']}" for i, h in enumerate(heads))


async def _generate(deps: Deps, si: StepInput) -> StepResult:
    variables = _vars(si)
    fan_in = si.item is None and any(si.wf.by_id[d].foreach for d in si.spec.after)
    draft = draft_of(si.run, si.wf, si.spec) if fan_in else ""
    if fan_in:
        variables["draft"] = draft
    result = await _complete(deps, si, si.spec.prompt.format_map(variables), si.spec.max_tokens)
    cut = bool(result.output.get("cut"))
    text = _whole_sentences(result.output["text"].strip()) if cut else result.output["text"].strip()
    why = _failed_edit(draft, text, si.spec.min_share_of_draft) if draft else None
    result.output = {"text": draft, "kept_draft": True, "why": why} if why else {"text": text, "cut": cut}
    return result


def _whole_sentences(text: str) -> str:
    """A text cut off by max_tokens, up to its last full sentence (kept whole when that would drop over half):
    an article should not stop mid-sentence between two sections."""
    end = max(text.rfind(". "), text.rfind(".\n"), text.rfind("! "), text.rfind("? "), text.rfind(".["))
    if text.endswith((".", "!", "?")) or end < len(text) // 2:
        return text
    return text[:end + 1].rstrip()


def _failed_edit(draft: str, text: str, min_share: float) -> str | None:
    """Why an edit of `draft` is unusable, or None. An edit keeps the article's shape: every heading once, in
    order, none added, and at least `min_share` of its length (a small model's edit pass can collapse an
    article to a sentence, or loop on one section; either is a failed edit, not a new article)."""
    if len(text) < min_share * len(draft):
        return f"the edit was {len(text)} characters for a draft of {len(draft)}"
    heads = [line for line in draft.splitlines() if line.startswith("## ")]
    got = [line.strip() for line in text.splitlines() if line.startswith("#")]
    if got != heads:
        return f"the edit's headings {got[:12]} are not the draft's {heads}"
    return None


async def _complete(deps: Deps, si: StepInput, prompt: str, max_tokens: int,
                    guide: tuple[str, str] | None = None) -> StepResult:
    model = si.model
    rendered = render(model.template, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}])
    prompt_tokens = deps.tokenizer(model).count(rendered)
    max_tokens = min(max_tokens, model.max_output_tokens)
    if prompt_tokens + max_tokens > model.context_length:
        raise StepFailed(f"the step's prompt is {prompt_tokens} tokens; with {max_tokens} to write it does not fit "
                         f"{model.id}'s {model.context_length}-token window", retry=False)
    await si.hold(model.cost_micros(prompt_tokens, max_tokens), prompt_tokens + max_tokens)
    pieces: list[str] = []
    reported = time.monotonic()
    sampling = Sampling(frequency_penalty=si.spec.frequency_penalty) if si.spec.frequency_penalty else None
    async for piece in deps.triton.stream(model.triton_stream, rendered, max_tokens, 0.0,
                                          timeout_s=si.wf.step_timeout_s, sampling=sampling, guide=guide):
        pieces.append(piece.text)
        if time.monotonic() - reported >= PROGRESS_EVERY_S:  # a Redis write per piece would cost more than it shows
            reported = time.monotonic()
            await si.progress(len(pieces))
    text = "".join(pieces)
    completion = deps.tokenizer(model).count(text)
    # Cut by max_tokens (each streamed piece is a token for the llama.cpp models): _generate trims it.
    return StepResult({"text": text, "cut": len(pieces) >= max_tokens}, model=model.id, prompt_tokens=prompt_tokens,
                      completion_tokens=completion,
                      cost_micros=model.cost_micros(prompt_tokens, completion))
