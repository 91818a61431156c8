"""Model routing: honour an explicit model when the plan allows it; for "auto", pick the cheapest model
strong enough for the request, among those the plan allows, that fit its context, are being served and are
expected to start it within the plan's latency target (Triton's queue, conflux/triton_load.py); when none
is, a model one step weaker that is; when none is either, the least loaded strong-enough one.

Pure functions of their inputs (catalogue, plan, request features, served models, load), so every
decision is reproducible from its RoutingDecision event.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Set
from dataclasses import dataclass

from conflux.errors import ConfluxError
from conflux.models import ModelCatalogue, ModelSpec, Plan
from conflux.triton_load import ModelLoad

# Signals that a request needs a stronger model than the smallest one.
_HARD = re.compile(r"\b(prove|derive|step[- ]by[- ]step|analy[sz]e|compare|refactor|debug|algorithm|"
                   r"theorem|optimi[sz]e|explain why)\b|```", re.IGNORECASE)


class RoutingError(ConfluxError):
    """No model can serve the request; `code` says why (maps to an HTTP status at the edge)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code  # model_not_found | model_not_allowed | context_length_exceeded | no_capacity
        # | insufficient_quota (streams/routing_stage.py)


@dataclass(frozen=True)
class Features:
    prompt_tokens: int
    max_output_tokens: int
    turns: int
    text: str  # the latest user message
    guided: bool = False  # tools or response_format: only a model that takes a grammar can serve it
    logprobs: bool = False  # only a model that returns logprobs can serve it
    sources: int = 0  # retrieved chunks in the prompt: the answer must be read out of them


def capable(model: ModelSpec, features: Features) -> str | None:
    """What the request needs that the model cannot do, or None."""
    if features.guided and not model.guided_decoding:
        return "cannot constrain its output (tools, response_format)"
    if features.logprobs and not model.logprobs:
        return "returns no logprobs"
    return None


@dataclass(frozen=True)
class Decision:
    model: ModelSpec
    reason: str
    candidates: tuple[str, ...]
    estimated_cost_usd: float
    # Where the inference stage goes if `model` fails or stays silent before its first token: the catalogue's
    # fallbacks of the model asked for, in order, that this request may use and that are being served.
    fallbacks: tuple[ModelSpec, ...] = ()
    load: tuple[tuple[str, ModelLoad], ...] = ()  # (model id, its load) as seen for the candidates


_QUESTION = re.compile(r"\?")
_LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*])\s+\S", re.MULTILINE)


@dataclass(frozen=True)
class Difficulty:
    """How strong a model a request needs, and the signals that said so (recorded in the routing reason).

    0 = chit-chat the smallest model answers as well as any;
    1 = work the smallest model gets wrong: several questions at once, a tool call or JSON answer, a long
        conversation, prompt or answer;
    2 = reasoning, code or analysis, a very long prompt, or answering from retrieved sources. A model must find
        the fact in the sources and copy it: on `make eval` SmolLM2-135M got 0.13 of the answers right,
        Qwen2.5-Coder-0.5B 0.19 and Qwen2.5-Coder-1.5B 0.31 over the same retrieved chunks.
    """

    level: int
    signals: tuple[str, ...]

    def __str__(self) -> str:
        return f"complexity {self.level}" + (f" ({', '.join(self.signals)})" if self.signals else "")


def difficulty(f: Features) -> Difficulty:
    hard = [s for s, hit in ((f"grounded in {f.sources} source(s)", f.sources > 0),
                             ("reasoning or code", bool(_HARD.search(f.text))),
                             (f"prompt {f.prompt_tokens} > 1500 tokens", f.prompt_tokens > 1500)) if hit]
    if hard:
        return Difficulty(2, tuple(hard))
    parts = max(len(_QUESTION.findall(f.text)), len(_LIST_ITEM.findall(f.text)))
    medium = [s for s, hit in ((f"{parts} questions", parts > 1),
                               ("tools or JSON", f.guided),
                               (f"{f.turns} turns", f.turns > 6),
                               (f"prompt {f.prompt_tokens} > 500 tokens", f.prompt_tokens > 500),
                               (f"max_tokens {f.max_output_tokens} > 512", f.max_output_tokens > 512)) if hit]
    return Difficulty(1 if medium else 0, tuple(medium))


def complexity(f: Features) -> int:
    return difficulty(f).level


IDLE = ModelLoad(0, 0.0)


def route(requested: str, catalogue: ModelCatalogue, plan: Plan, features: Features,
          served: Set[str], load: Mapping[str, ModelLoad] | None = None) -> Decision:
    """`load` is per Triton model name (empty: unknown, every model taken as idle)."""
    seen = load or {}

    def wait(m: ModelSpec) -> float:
        return seen.get(m.triton_stream, IDLE).wait_ms

    def loads(models: list[ModelSpec]) -> tuple[tuple[str, ModelLoad], ...]:
        return tuple((m.id, seen[m.triton_stream]) for m in models if m.triton_stream in seen)

    def fits(m: ModelSpec) -> bool:
        return features.prompt_tokens + features.max_output_tokens <= m.context_length

    def cost(m: ModelSpec) -> float:
        return m.cost(features.prompt_tokens, features.max_output_tokens)

    def usable(m: ModelSpec) -> bool:
        return catalogue.allowed(m, plan) and fits(m) and capable(m, features) is None and m.triton_stream in served

    if requested != "auto":
        try:
            model = catalogue.get(requested)
        except ConfluxError as exc:
            raise RoutingError(str(exc), "model_not_found") from exc
        if not catalogue.allowed(model, plan):
            raise RoutingError(f"model {model.id} needs plan {model.min_plan}; this tenant is on {plan.name}",
                               "model_not_allowed")
        if not fits(model):
            raise RoutingError(f"{features.prompt_tokens} prompt + {features.max_output_tokens} output tokens exceed "
                               f"{model.id}'s context of {model.context_length}", "context_length_exceeded")
        if lacks := capable(model, features):
            raise RoutingError(f"model {model.id} {lacks}", "unsupported_parameter")
        backups = tuple(m for m in map(catalogue.get, model.fallbacks) if usable(m))
        if model.triton_stream not in served:
            if not backups:
                tried = f" nor any of its fallbacks ({', '.join(model.fallbacks)})" if model.fallbacks else ""
                raise RoutingError(f"model {model.id} is not being served right now{tried}", "no_capacity")
            return Decision(backups[0], f"fallback from {model.id}: not being served", (model.id,),
                            cost(backups[0]), backups[1:], loads([backups[0]]))
        return Decision(model, "explicit request, allowed by plan", (model.id,), cost(model), backups, loads([model]))

    need = difficulty(features)
    level = need.level
    # The echo model is a measuring tool, never an automatic choice.
    pool = [m for m in catalogue.models if m.quality > 0 and catalogue.allowed(m, plan)
            and capable(m, features) is None]
    usable_now = [m for m in pool if fits(m) and m.triton_stream in served]
    if not usable_now:
        raise RoutingError(f"no model on plan {plan.name} can serve {features.prompt_tokens} prompt tokens now",
                           "no_capacity" if pool else "model_not_allowed")
    strong = [m for m in usable_now if m.quality >= level + 1]
    target = plan.latency_target_ms
    if strong:
        prompt = [m for m in strong if not target or wait(m) <= target]
        if prompt:
            chosen = min(prompt, key=lambda m: (cost(m), wait(m), -m.quality))
            why = f"auto: {need}, cheapest of {len(prompt)} model(s) with quality >= {level + 1}"
        # Every strong-enough model would keep the request waiting past the plan's target (so there is one): one
        # step down in quality, if such a model can start it in time (a grounded question on the 0.5B now, rather
        # than on the 1.5B after a queue of seconds: a single 1.5B instance reads a grounded prompt in ~6 s here).
        elif level and (near := [m for m in usable_now if m.quality == level and wait(m) <= target]):
            chosen = min(near, key=lambda m: (cost(m), wait(m)))
            why = f"auto: {need}, one step down: cheapest of {len(near)} model(s) with quality {level} within target"
        else:
            chosen = min(strong, key=lambda m: (wait(m), cost(m)))
            why = f"auto: {need}, least loaded of {len(strong)} model(s) with quality >= {level + 1}"
        if slow := [f"{m.id} ({wait(m):.0f} ms)" for m in strong if m not in prompt]:
            why += f"; expected wait over plan {plan.name}'s {target:.0f} ms target: {', '.join(slow)}"
    else:
        chosen = max(usable_now, key=lambda m: (m.quality, -cost(m), -wait(m)))
        why = f"auto: {need}, strongest model plan {plan.name} can use now (quality {chosen.quality})"
    if down := [m.id for m in pool if fits(m) and m.triton_stream not in served]:
        why += f"; not served now: {', '.join(down)}"
    backups = tuple(m for m in map(catalogue.get, chosen.fallbacks) if usable(m))
    return Decision(chosen, why, tuple(m.id for m in usable_now), cost(chosen), backups, loads(usable_now))
