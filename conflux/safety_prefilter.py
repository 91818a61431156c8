"""A first safety pass that needs no embedding: a linear model over hashed word and character n-grams (weights in
safety_prefilter.npz, written by `make safety-model`, see producers/prefilter_train.py).

It only ever clears. A text it scores under its threshold is judged safe by the classifier's stage without the
MiniLM embedding (about 9 ms of Triton CPU on this machine); anything else goes to the classifier as before, and
the rules read every text whatever the prefilter says. The threshold is set on a validation fold the model
never trained on, so that it clears at most a small share of the unsafe texts there (`max_unsafe_cleared`
in the weights file); `make safety-eval` measures the whole check, prefilter included, on the held-out split.
The classifier also reads the prompt head: it adds this head's log-odds to its own (conflux/safety_model.py).
"""

from __future__ import annotations

import hashlib
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
_MIX = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / the golden ratio: consecutive code points spread over the bits
_SALT = {n: np.uint64((0x2545F4914F6CDD1D * n + 1) % 2**64) for n in (3, 4, 5)}  # each n-gram length its own hash
F32 = npt.NDArray[np.float32]


class PrefilterError(ConfluxError):
    """The prefilter's weights are missing or malformed."""


def features(text: str) -> tuple[npt.NDArray[np.int64], F32]:
    """(indices, values) of a text's hashed features: words, word pairs and character 3- to 5-grams of the
    lower-cased words, counts scaled to unit length. Fixed hashes (crc32 for words, a multiplicative hash of the
    code points for character n-grams, computed for all positions at once), not hash(): the same text must hash
    the same in the trainer and in every worker, whatever PYTHONHASHSEED says."""
    words = _WORD.findall(text.lower())
    if not words:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    grams = [f"w:{w}" for w in words] + [f"b:{a} {b}" for a, b in itertools.pairwise(words)]
    hashed = [np.fromiter((zlib.crc32(g.encode()) for g in grams), dtype=np.uint64, count=len(grams))]
    points = np.frombuffer(f" {' '.join(words)} ".encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    for n in (3, 4, 5):
        if len(points) < n:
            break
        h = points[:len(points) - n + 1] * _SALT[n]  # uint64 arithmetic wraps: the hash is modulo 2^64
        for k in range(1, n):
            h = (h + points[k:len(points) - n + 1 + k]) * _MIX
        hashed.append(h >> np.uint64(29))  # the high bits mix best
    idx, counts = np.unique(np.concatenate(hashed) % np.uint64(DIM), return_counts=True)
    values = counts.astype(np.float32)
    return idx.astype(np.int64), values / np.float32(np.linalg.norm(values))


@dataclass(frozen=True)
class PrefilterHead:
    weights: F32  # DIM weights, then the bias
    threshold: float  # a text scoring under this is cleared

    def logit(self, text: str) -> float:
        idx, values = features(text)
        return float(values @ self.weights[idx]) + float(self.weights[-1])

    def score(self, text: str) -> float:
        return 1 / (1 + float(np.exp(-self.logit(text))))

    def digest(self) -> str:
        """Of the weights as loaded: the classifier, which adds this head's logit to its own, was calibrated with
        exactly these and refuses others."""
        return hashlib.sha256(self.weights.astype(np.float32).tobytes()).hexdigest()

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
