"""The safety classifier at run time: two small heads over a MiniLM embedding (weights in safety_head.json,
written by `make safety-model`, see producers/safety_train.py), the prompt head's logit summed with the hashed
n-gram head's (conflux/safety_prefilter.py) and a nearest-neighbour vote over the training prompts
(conflux/safety_neighbours.py), at weights calibrated with it. A check is two matrix-vector products, one n-gram
scoring and one product over the neighbours (about 1 ms); the embedding is the one the request already has.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from conflux.errors import ConfluxError
from conflux.safety import check_rules, decode_hidden
from conflux.safety_neighbours import NEIGHBOURS_PATH, Neighbours
from conflux.safety_prefilter import PREFILTER_PATH, Prefilter, PrefilterHead
from conflux.taxonomy import Policy

HEAD_PATH = Path(__file__).with_name("safety_head.json")
F32 = npt.NDArray[np.float32]
MAX_HIDDEN = 4  # decoded blobs judged per text (each costs an embedding)
HEAD_CHARS = 2000  # what the request's shared embedding reads (its encoder stops at 256 tokens anyway)
SLICE_CHARS = 1500
MAX_SLICES = 3  # more of a long message judged beyond its head, the last one its tail
# The output check reads an answer's last characters: short enough that a harmful passage is not averaged away
# by the harmless text around it (the embedding is a mean over tokens), long enough to span a window of pieces.
OUTPUT_WINDOW_CHARS = 600


def slices(text: str) -> list[str]:
    """Parts of a long message beyond its head, to be judged too: the tail and evenly spaced slices between.
    A payload hidden after a long harmless preamble would otherwise never reach the classifier. Bounded (a
    1 MiB message is not embedded 700 times): what falls between slices is left to the output check."""
    if len(text) <= HEAD_CHARS:
        return []
    rest = len(text) - HEAD_CHARS
    if rest <= SLICE_CHARS * MAX_SLICES:
        return [text[i:i + SLICE_CHARS] for i in range(HEAD_CHARS, len(text), SLICE_CHARS)]
    step = (rest - SLICE_CHARS) / (MAX_SLICES - 1)
    return [text[HEAD_CHARS + round(k * step):][:SLICE_CHARS] for k in range(MAX_SLICES)]


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
    """Three heads: "unsafe" for prompts (plus `ngram_weight` times the n-gram head's logit of the same text and
    `knn_weight` times the neighbours' vote),
    "unsafe" for answers (trained on people-scored answers, read through the output check's window), and the
    category head both share."""

    def __init__(self, threshold: float, categories: list[str], unsafe: F32, category: F32,
                 output_threshold: float, output_unsafe: F32, ngram: PrefilterHead | None = None,
                 ngram_weight: float = 0.0, neighbours: Neighbours | None = None, knn_weight: float = 0.0) -> None:
        if unsafe.shape != (category.shape[1],) or category.shape[0] != len(categories) \
                or output_unsafe.shape != unsafe.shape:
            raise SafetyModelError(f"safety head shapes do not fit: {unsafe.shape} vs {category.shape}")
        if ngram_weight and ngram is None:
            raise SafetyModelError("the safety head adds an n-gram logit but was given no n-gram head")
        if knn_weight and (neighbours is None or neighbours.vectors.shape[1] != unsafe.shape[0] - 1):
            raise SafetyModelError("the safety head adds a neighbours' vote but was given no neighbours of its size")
        self.neighbours = neighbours
        self.knn_weight = knn_weight
        self.ngram = ngram
        self.ngram_weight = ngram_weight
        self.threshold = threshold
        self.output_threshold = output_threshold
        self._wo = output_unsafe[:-1]
        self._bo = float(output_unsafe[-1])
        self.categories = categories
        self._w = unsafe[:-1]
        self._b = float(unsafe[-1])
        self._wc = category[:, :-1]
        self._bc = category[:, -1]

    @classmethod
    def load(cls, path: Path = HEAD_PATH, prefilter_path: Path = PREFILTER_PATH,
             neighbours_path: Path = NEIGHBOURS_PATH) -> SafetyHead:
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SafetyModelError(f"cannot read the safety head {path}: {exc}; run `make safety-model`") from exc
        ngram_weight = float(raw.get("ngram_weight", 0.0))
        ngram = None
        if ngram_weight:
            ngram = Prefilter.load(prefilter_path).prompt
            # Its threshold was picked for the sum with exactly these n-gram weights: others would move it.
            if ngram.digest() != raw.get("manifest", {}).get("ngram_sha256"):
                raise SafetyModelError(f"{prefilter_path} is not the n-gram head {path} was calibrated with; "
                                       "run `make safety-model`")
        knn_weight = float(raw.get("knn_weight", 0.0))
        neighbours = None
        if knn_weight:
            neighbours = Neighbours.load(neighbours_path)
            if neighbours.digest() != raw.get("manifest", {}).get("neighbours_sha256"):
                raise SafetyModelError(f"{neighbours_path} are not the neighbours {path} was calibrated with; "
                                       "run `make safety-model`")
        return cls(float(raw["threshold"]), list(raw["categories"]), np.asarray(raw["unsafe"], dtype=np.float32),
                   np.asarray(raw["category"], dtype=np.float32), float(raw["output"]["threshold"]),
                   np.asarray(raw["output"]["unsafe"], dtype=np.float32), ngram, ngram_weight, neighbours, knn_weight)

    def judge_output(self, vector: Any) -> Judgement:
        """An answer's window (its last OUTPUT_WINDOW_CHARS characters) judged by the output head."""
        return self._judge(vector, self._wo, self._bo, self.output_threshold, None)[0]

    def judge_many(self, vectors: Any, texts: list[str]) -> list[Judgement]:
        """Prompts (or their slices) judged: `vectors` are the embeddings of `texts`."""
        extra = np.zeros(len(texts), dtype=np.float32)
        if self.ngram is not None and self.ngram_weight:
            extra += self.ngram_weight * np.array([self.ngram.logit(t) for t in texts], dtype=np.float32)
        if self.neighbours is not None and self.knn_weight:
            votes = self.neighbours.logits(vectors)
            if votes.shape != extra.shape:
                raise SafetyModelError(f"{len(texts)} texts for {len(votes)} embeddings")
            extra += self.knn_weight * votes
        return self._judge(vectors, self._w, self._b, self.threshold, extra)

    def _judge(self, vectors: Any, w: F32, b: float, threshold: float, extra: F32 | None) -> list[Judgement]:
        x = np.asarray(vectors, dtype=np.float32).reshape(-1, self._w.shape[0])
        logits = x @ w + b
        if extra is not None:  # the n-gram head's and the neighbours' weighted log-odds, one per text
            if extra.shape != logits.shape:
                raise SafetyModelError(f"{len(extra)} texts for {len(logits)} embeddings")
            logits = logits + extra
        p = 1 / (1 + np.exp(-logits))
        z = x @ self._wc.T + self._bc
        z -= z.max(1, keepdims=True)
        pc = np.exp(z)
        pc /= pc.sum(1, keepdims=True)
        best = pc.argmax(1)
        return [Judgement(float(p[i]), bool(p[i] >= threshold), self.categories[int(best[i])],
                          float(pc[i, best[i]]), dict(zip(self.categories, (p[i] * pc[i]).tolist(), strict=True)))
                for i in range(len(x))]

    def judge(self, vector: Any, text: str) -> Judgement:
        return self.judge_many(vector, [text])[0]


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


class Embedder(Protocol):
    async def embed(self, texts: list[str]) -> Any: ...


@dataclass(frozen=True)
class Assessment:
    verdict: str  # ALLOW | FLAG | BLOCK under the policy
    categories: list[str]
    reasons: list[str]
    model: Judgement  # the classifier's highest-scoring judgement of the text
    embedded: bool = True  # False when the prefilter cleared all of it: no embedding was computed


def cleared_judgement(score: float) -> Judgement:
    """A text the prefilter cleared: safe, with the prefilter's score, no category."""
    return Judgement(score, False, "", 0.0, {})


async def judge_answer_windows(embedder: Embedder, head: SafetyHead, prefilter: PrefilterHead | None,
                               windows: list[str]) -> tuple[list[Judgement], bool]:
    """Windows of an answer judged by the output head (the stream's output check and `make safety-eval`): those the
    prefilter clears without an embedding, the rest embedded together. Also whether any was embedded."""
    scores = [prefilter.cleared(w) if prefilter is not None else None for w in windows]
    todo = [w for w, s in zip(windows, scores, strict=True) if s is None]
    judged = [cleared_judgement(s) for s in scores if s is not None]
    if todo:
        judged += [head.judge_output(v) for v in await embedder.embed(todo)]
    return judged, bool(todo)


async def assess(embedder: Embedder, head: SafetyHead, policy: Policy, text: str, *, rule_text: str | None = None,
                 head_vector: Any = None, prefilter: PrefilterHead | None = None) -> Assessment:
    """The one judgement of a prompt, used by the chat's input stage, /v1/moderations and `make safety-eval`.

    The classifier reads the head of `text` (`head_vector` is its embedding when the caller already has it, or a
    function that returns an awaitable of it, called only if it is needed), then a long text's tail and slices
    between, then any text hidden in an encoding; the rules read `rule_text` (default `text`): the chat passes
    every user turn there, since a rule hit can span turns. With a `prefilter`, a head or slice it clears is
    judged safe without an embedding (conflux/safety_prefilter.py); hidden text always goes to the classifier."""
    parts = [text[:HEAD_CHARS], *slices(text)]
    cleared = [prefilter.cleared(p) if prefilter is not None else None for p in parts]
    judged = [cleared_judgement(c) for c in cleared if c is not None]
    if cleared[0] is None:
        if head_vector is None:
            head_vector = (await embedder.embed([parts[0]]))[0]
        elif callable(head_vector):
            head_vector = await head_vector()
        judged.append(head.judge(head_vector, parts[0]))
    if rest := [p for p, c in zip(parts[1:], cleared[1:], strict=True) if c is None]:
        judged += head.judge_many(await embedder.embed(rest), rest)
    model = max(judged, key=lambda j: (j.unsafe, j.p_unsafe))
    hidden_texts = decode_hidden(text)[:MAX_HIDDEN]
    hidden = head.judge_many(await embedder.embed(hidden_texts), hidden_texts) if hidden_texts else []
    rules = check_rules(text if rule_text is None else rule_text)
    verdict, categories, reasons = judge(policy, list(rules.categories), list(rules.reasons), model, hidden)
    return Assessment(verdict, categories, reasons, model, embedded=cleared[0] is None or bool(rest))
