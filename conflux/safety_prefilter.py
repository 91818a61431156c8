"""A first safety pass that needs no embedding: a linear model over hashed word and character n-grams (weights in
safety_prefilter.npz, written by `make safety-model`, see producers/prefilter_train.py).

It only ever clears. A text it scores under its threshold is judged safe by the classifier's stage without the
MiniLM embedding (about 9 ms of Triton CPU on this machine); anything else goes to the classifier as before, and
the rules read every text whatever the prefilter says. The threshold is set on a validation fold the model
never trained on, so that it clears at most a small share of the unsafe texts there (`max_unsafe_cleared`
in the weights file); `make safety-eval` measures the whole check, prefilter included, on the held-out split.
"""

from __future__ import annotations

import itertools
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from conflux.errors import ConfluxError

PREFILTER_PATH = Path(__file__).with_name("safety_prefilter.npz")
DIM = 1 << 15  # hashed feature space: 64 KiB of float16 weights per head
_WORD = re.compile(r"\w+")
F32 = npt.NDArray[np.float32]


class PrefilterError(ConfluxError):
    """The prefilter's weights are missing or malformed."""


def features(text: str) -> tuple[npt.NDArray[np.int64], F32]:
    """(indices, values) of a text's hashed features: words, word pairs and character 3- to 5-grams of the
    lower-cased words, counts scaled to unit length. crc32, not hash(): the same text must hash the same in
    the trainer and in every worker, whatever PYTHONHASHSEED says."""
    words = _WORD.findall(text.lower())
    grams = [f"w:{w}" for w in words]
    grams += [f"b:{a} {b}" for a, b in itertools.pairwise(words)]
    joined = f" {' '.join(words)} "
    for n in (3, 4, 5):
        grams += [joined[i:i + n] for i in range(len(joined) - n + 1)]
    if not grams:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    idx, counts = np.unique(np.fromiter((zlib.crc32(g.encode()) % DIM for g in grams), dtype=np.int64,
                                        count=len(grams)), return_counts=True)
    values = counts.astype(np.float32)
    return idx, values / np.float32(np.linalg.norm(values))


@dataclass(frozen=True)
class PrefilterHead:
    weights: F32  # DIM weights, then the bias
    threshold: float  # a text scoring under this is cleared

    def score(self, text: str) -> float:
        idx, values = features(text)
        z = float(values @ self.weights[idx]) + float(self.weights[-1])
        return 1 / (1 + float(np.exp(-z)))

    def cleared(self, text: str) -> float | None:
        """The text's score if the prefilter clears it (no embedding needed), else None."""
        score = self.score(text)
        return score if score < self.threshold else None


@dataclass(frozen=True)
class Prefilter:
    """One head for prompts (read before the input classifier) and one for answers (before the output's)."""

    prompt: PrefilterHead
    answer: PrefilterHead

    @classmethod
    def load(cls, path: Path = PREFILTER_PATH) -> Prefilter:
        try:
            with np.load(path) as z:
                heads = {name: PrefilterHead(z[f"{name}_weights"].astype(np.float32), float(z[f"{name}_threshold"]))
                         for name in ("prompt", "answer")}
        except (OSError, KeyError, ValueError) as exc:
            raise PrefilterError(f"cannot read the safety prefilter {path}: {exc}; run `make safety-model`") from exc
        for name, head in heads.items():
            if head.weights.shape != (DIM + 1,):
                raise PrefilterError(f"prefilter head {name} has {head.weights.shape[0]} weights, not {DIM + 1}")
        return cls(**heads)
