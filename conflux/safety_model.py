"""The safety classifier at run time: two small heads over a MiniLM embedding (weights in safety_head.json,
written by `make safety-model`, see producers/safety_train.py). A check is two matrix-vector products
(about 20 microseconds); the embedding is the one the request already has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from conflux.errors import ConfluxError
from conflux.taxonomy import Policy

HEAD_PATH = Path(__file__).with_name("safety_head.json")
F32 = npt.NDArray[np.float32]
MAX_HIDDEN = 4  # decoded blobs judged per text (each costs an embedding)


class SafetyModelError(ConfluxError):
    """The classifier's weights are missing or do not fit the embedding."""


@dataclass(frozen=True)
class Judgement:
    p_unsafe: float
    unsafe: bool
    category: str  # the most likely category if the text is unsafe (also set, but unused, when it is safe)
    p_category: float
    scores: dict[str, float]  # per category: P(unsafe) x P(category | unsafe)


class SafetyHead:
    def __init__(self, threshold: float, categories: list[str], unsafe: F32, category: F32) -> None:
        if unsafe.shape != (category.shape[1],) or category.shape[0] != len(categories):
            raise SafetyModelError(f"safety head shapes do not fit: {unsafe.shape} vs {category.shape}")
        self.threshold = threshold
        self.categories = categories
        self._w = unsafe[:-1]
        self._b = float(unsafe[-1])
        self._wc = category[:, :-1]
        self._bc = category[:, -1]

    @classmethod
    def load(cls, path: Path = HEAD_PATH) -> SafetyHead:
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SafetyModelError(f"cannot read the safety head {path}: {exc}; run `make safety-model`") from exc
        return cls(float(raw["threshold"]), list(raw["categories"]), np.asarray(raw["unsafe"], dtype=np.float32),
                   np.asarray(raw["category"], dtype=np.float32))

    def judge_many(self, vectors: Any) -> list[Judgement]:
        x = np.asarray(vectors, dtype=np.float32).reshape(-1, self._w.shape[0])
        p = 1 / (1 + np.exp(-(x @ self._w + self._b)))
        z = x @ self._wc.T + self._bc
        z -= z.max(1, keepdims=True)
        pc = np.exp(z)
        pc /= pc.sum(1, keepdims=True)
        best = pc.argmax(1)
        return [Judgement(float(p[i]), bool(p[i] >= self.threshold), self.categories[int(best[i])],
                          float(pc[i, best[i]]), dict(zip(self.categories, (p[i] * pc[i]).tolist(), strict=True)))
                for i in range(len(x))]

    def judge(self, vector: Any) -> Judgement:
        return self.judge_many(vector)[0]


def judge(policy: Policy, rule_categories: list[str], rule_reasons: list[str], model: Judgement,
          hidden: list[Judgement]) -> tuple[str, list[str], list[str]]:
    """(verdict, categories, reasons) of a prompt from its rule hits, the classifier's judgement of it and of
    any text hidden in an encoding."""
    categories, reasons = list(rule_categories), list(rule_reasons)

    def add(cat: str, reason: str) -> None:
        if cat not in categories:
            categories.append(cat)
        reasons.append(reason)

    if model.unsafe:
        add(model.category, f"classifier: unsafe {model.p_unsafe:.2f}, {model.category} {model.p_category:.2f}")
    for j in hidden:
        if j.unsafe:
            add("obfuscation", f"encoded text, decoded: unsafe {j.p_unsafe:.2f}")
            add(j.category, f"classifier (decoded text): {j.category} {j.p_category:.2f}")
    return policy.verdict(categories), categories, reasons
