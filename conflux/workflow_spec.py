"""Workflows as data: a small graph of steps declared in infra/workflows/<name>.toml, read and checked here.

A step runs once per run, or once per item (`foreach = true`: one per section of the article) when the run
fans out. Its `after` steps must have succeeded first:
- a per-item step after another per-item step waits only for the same item (research.2 -> write.2);
- a per-item step after a single step waits for it (outline -> research.0 .. research.N-1: the fan-out);
- a single step after a per-item step waits for every item (write.* -> edit: the fan-in).
How many items there are is known once the step that produces them (the workflow's `items_from`) has run.
The step kinds themselves (what `outline`, `retrieve`, `generate` do) are code: streams/workflow/steps.py.
"""

from __future__ import annotations

import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conflux.config import REPO_ROOT
from conflux.errors import ConfluxError

WORKFLOWS_DIR = REPO_ROOT / "infra" / "workflows"
KINDS = ("outline", "retrieve", "generate")
# The variables a prompt template may use, by where the step sits (checked when the file is read).
RUN_VARS = {"topic", "audience", "sections"}
ITEM_VARS = {"section", "index", "passages"}
FAN_IN_VARS = {"draft"}


class WorkflowSpecError(ConfluxError):
    """A workflow file is missing or invalid; or a step name does not belong to the workflow."""


@dataclass(frozen=True)
class StepSpec:
    id: str
    kind: str
    after: tuple[str, ...] = ()
    foreach: bool = False
    prompt: str = ""
    max_tokens: int = 0
    top_k: int = 3
    # retrieve: passages less similar than this to the query (MiniLM cosine) are not offered for citing: top_k
    # always returns something, and a section that cites an unrelated document is worse than one citing none.
    min_score: float = 0.0
    # generate: keep the fan-in's draft when the model returns less than this share of it (a small model's
    # edit pass can collapse an article to a sentence; that is a failed edit, not a shorter article).
    min_share_of_draft: float = 0.0
    # generate: OpenAI's frequency_penalty (-2 to 2). Greedy decoding lets a small model loop on one sentence;
    # a penalty on tokens already written breaks the loop (not for an edit, which must repeat the draft).
    frequency_penalty: float = 0.0


@dataclass(frozen=True)
class Workflow:
    name: str
    description: str
    steps: tuple[StepSpec, ...]
    items_from: str  # the step whose output lists the items (`sections`) that per-item steps fan out over
    max_attempts: int = 3
    step_timeout_s: float = 180.0
    max_items: int = 8
    # The model a run uses when its request names none: the first of these the tenant's plan allows.
    models: tuple[str, ...] = ()
    by_id: dict[str, StepSpec] = field(default_factory=dict, compare=False, repr=False)

    def step(self, instance: str) -> tuple[StepSpec, int | None]:
        """('write.2') -> (the write step, 2); ('edit') -> (the edit step, None)."""
        sid, _, item = instance.partition(".")
        spec = self.by_id.get(sid)
        if spec is None or spec.foreach != bool(item) or (item and not item.isdigit()):
            raise WorkflowSpecError(f"{instance!r} is not a step of workflow {self.name}")
        return spec, int(item) if item else None

    def instances(self, items: int | None) -> list[str]:
        """Every step instance of a run, in declaration order (items unknown yet: per-item steps left out)."""
        out: list[str] = []
        for s in self.steps:
            if s.foreach:
                out += [f"{s.id}.{i}" for i in range(items or 0)]
            else:
                out.append(s.id)
        return out

    def roots(self) -> list[str]:
        return [s.id for s in self.steps if not s.after]

    def ready_after(self, done: set[str], items: int | None) -> list[str]:
        """The step instances whose `after` have all succeeded (given the instances in `done`) and that have not
        run. Idempotent: called after every step, by whichever worker finished it."""
        ready = []
        for inst in self.instances(items):
            if inst in done:
                continue
            spec, item = self.step(inst)
            if all(self._met(dep, item, done, items) for dep in spec.after):
                ready.append(inst)
        return ready

    def _met(self, dep: str, item: int | None, done: set[str], items: int | None) -> bool:
        d = self.by_id[dep]
        if not d.foreach:
            return dep in done
        if item is not None:
            return f"{dep}.{item}" in done
        return items is not None and all(f"{dep}.{i}" in done for i in range(items))

    @property
    def last(self) -> StepSpec:
        return self.steps[-1]


def load_workflow(name: str, directory: Path = WORKFLOWS_DIR) -> Workflow:
    if not name.isidentifier():
        raise WorkflowSpecError(f"unknown workflow {name!r}")
    path = directory / f"{name}.toml"
    try:
        doc: dict[str, Any] = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise WorkflowSpecError(f"unknown workflow {name!r} (no {path})") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise WorkflowSpecError(f"cannot read {path}: {exc}") from exc
    try:
        steps = tuple(StepSpec(**{**raw, "after": tuple(raw.get("after", ()))}) for raw in doc.get("step", []))
        wf = Workflow(name=doc["name"], description=doc.get("description", ""), steps=steps,
                      items_from=doc["items_from"], max_attempts=int(doc.get("max_attempts", 3)),
                      step_timeout_s=float(doc.get("step_timeout_s", 180.0)),
                      max_items=int(doc.get("max_items", 8)), models=tuple(doc.get("models", ())),
                      by_id={s.id: s for s in steps})
    except (KeyError, TypeError, ValueError) as exc:
        raise WorkflowSpecError(f"{path}: {exc!r}") from exc
    _check(wf, path)
    return wf


def _check(wf: Workflow, path: Path) -> None:
    def bad(why: str) -> WorkflowSpecError:
        return WorkflowSpecError(f"{path}: {why}")

    if wf.name != path.stem:
        raise bad(f"name {wf.name!r} differs from the file's name")
    if not wf.steps or len(wf.by_id) != len(wf.steps):
        raise bad("steps must be at least one, with unique ids")
    if wf.max_attempts < 1 or wf.step_timeout_s <= 0 or wf.max_items < 1:
        raise bad("max_attempts, step_timeout_s and max_items must be positive")
    if not all(isinstance(m, str) and m for m in wf.models):
        raise bad("models must be a list of model ids")
    seen: set[str] = set()
    for s in wf.steps:
        if not s.id.isidentifier():
            raise bad(f"step id {s.id!r} must be a plain name")
        if s.kind not in KINDS:
            raise bad(f"step {s.id}: kind {s.kind!r} is not one of {KINDS}")
        if unknown := [d for d in s.after if d not in seen]:
            # Declared order is run order: it also rules out cycles.
            raise bad(f"step {s.id}: after {unknown} must name steps declared before it")
        seen.add(s.id)
        if not -1.0 <= s.min_score <= 1.0:
            raise bad(f"step {s.id}: min_score is a cosine similarity, from -1 to 1")
        if not -2.0 <= s.frequency_penalty <= 2.0:
            raise bad(f"step {s.id}: frequency_penalty is from -2 to 2, as in OpenAI's API")
        if s.kind == "generate" and (not s.prompt or s.max_tokens < 1):
            raise bad(f"step {s.id}: a generate step needs a prompt and max_tokens")
        fan_in = not s.foreach and any(wf.by_id[d].foreach for d in s.after)
        allowed = RUN_VARS | (ITEM_VARS if s.foreach else set()) | (FAN_IN_VARS if fan_in else set())
        names = {f for _, f, _, _ in string.Formatter().parse(s.prompt) if f is not None}
        if extra := sorted(n for n in names if n not in allowed):
            raise bad(f"step {s.id}: its prompt uses {extra}; it may use {sorted(allowed)}")
    src = wf.by_id.get(wf.items_from)
    if src is None or src.kind != "outline" or src.foreach:
        raise bad(f"items_from {wf.items_from!r} must name a single outline step")
    if wf.last.foreach or wf.last.kind != "generate":
        raise bad("the last step must be a single generate step: its text is the run's result")
    for s in wf.steps:
        if s.foreach and not _after(wf, s, wf.items_from):
            raise bad(f"step {s.id} runs per item, so it must come after {wf.items_from} (directly or not)")


def _after(wf: Workflow, s: StepSpec, target: str) -> bool:
    return any(d == target or _after(wf, wf.by_id[d], target) for d in s.after)
