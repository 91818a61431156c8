"""The model catalogue and tenant plans (infra/models.toml)."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conflux import budget
from conflux.config import REPO_ROOT
from conflux.errors import ConfluxError

MODELS_PATH = REPO_ROOT / "infra" / "models.toml"


class CatalogueModelError(ConfluxError):
    """The model catalogue is invalid, or a request names an unknown model."""


@dataclass(frozen=True)
class ModelSpec:
    id: str
    triton_stream: str
    triton_generate: str
    min_plan: str
    price_prompt_per_1k: float
    price_completion_per_1k: float
    context_length: int
    max_output_tokens: int
    quality: int
    template: str
    device: str
    description: str
    # Whether its Triton model takes a grammar (guided_decoding_guide_type / _guide inputs): tools and
    # response_format need one, so routing only sends them to these models.
    guided_decoding: bool = False
    # Whether its Triton model returns logprobs (return_log_probs / top_logprobs inputs, `logprobs` output).
    logprobs: bool = False
    # Models (ids) to answer instead, in order, when this one is down or fails before its first token.
    fallbacks: tuple[str, ...] = ()
    # Bumped by an operator who changes the weights behind it: cached answers of the old ones stop being served.
    version: str = "1"
    # The packaged GGUF whose vocabulary counts its tokens (model_runtime.gguf_files; echo models count with
    # SmolLM2's).
    tokenizer: str = "smollm2"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.price_prompt_per_1k + completion_tokens * self.price_completion_per_1k) / 1000

    def cost_micros(self, prompt_tokens: int, completion_tokens: int) -> int:
        """What a tenant is charged, in whole micro-dollars (integers only: budgets must add up exactly)."""
        return budget.cost_micros(prompt_tokens, completion_tokens, budget.price_picos(self.price_prompt_per_1k),
                                  budget.price_picos(self.price_completion_per_1k))


@dataclass(frozen=True)
class Plan:
    name: str
    rank: int
    requests_per_minute: int
    tokens_per_minute: int
    max_output_tokens: int
    # The share of the platform's capacity this plan's requests may still be admitted at (edge/load.py): a
    # free tenant is shed first, so its burst cannot starve an enterprise tenant.
    load_share: float = 1.0
    # auto prefers models expected to start a request within this (Triton's queue); 0: no target.
    latency_target_ms: float = 0.0


@dataclass(frozen=True)
class ModelCatalogue:
    models: tuple[ModelSpec, ...]
    plans: dict[str, Plan]

    def get(self, model_id: str) -> ModelSpec:
        for m in self.models:
            if m.id == model_id:
                return m
        raise CatalogueModelError(f"model {model_id!r} does not exist")

    def plan(self, name: str) -> Plan:
        try:
            return self.plans[name]
        except KeyError:
            raise CatalogueModelError(f"plan {name!r} does not exist") from None

    def allowed(self, model: ModelSpec, plan: Plan) -> bool:
        return self.plan(model.min_plan).rank <= plan.rank


def load_models(path: Path = MODELS_PATH) -> ModelCatalogue:
    try:
        doc: dict[str, Any] = tomllib.loads(path.read_text())
        plans = {name: Plan(name=name, **raw) for name, raw in doc.get("plan", {}).items()}
        models = tuple(ModelSpec(**{**raw, "fallbacks": tuple(raw.get("fallbacks", ()))})
                       for raw in doc.get("model", []))
    except (OSError, tomllib.TOMLDecodeError, TypeError) as exc:
        raise CatalogueModelError(f"invalid model catalogue {path}: {exc}") from exc
    ids = [m.id for m in models]
    if len(set(ids)) != len(ids) or "auto" in ids:
        raise CatalogueModelError(f"{path}: model ids must be unique and not 'auto'")
    for m in models:
        if m.min_plan not in plans:
            raise CatalogueModelError(f"{path}: model {m.id} names unknown plan {m.min_plan!r}")
        if m.context_length <= m.max_output_tokens or not m.triton_stream:
            raise CatalogueModelError(f"{path}: model {m.id} needs triton_stream and context > max output")
        if bad := [f for f in m.fallbacks if f not in ids or f == m.id]:
            raise CatalogueModelError(f"{path}: model {m.id} names unknown or itself as fallback: {bad}")
    return ModelCatalogue(models, plans)
