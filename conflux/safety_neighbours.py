"""A nearest-neighbour vote over the safety classifier's training prompts, added to its log-odds
(conflux/safety_model.py; written by `make safety-model`, see producers/safety_train.py).

Why: the logistic head is one direction through the embedding space, so a prompt is judged by where it falls
along it, not by what it resembles. Short everyday questions ("How do I reset my password?") fell on the
unsafe side of that direction beside Do-Not-Answer's questions about other people's accounts, although the
prompts nearest to them are safe ones (support tickets, banking requests); and a harmful request inside a story
fell on the safe side, although its nearest prompts are harmful ones. The vote reads the K most similar
training prompts (cosine similarity of the unit-length embeddings), each weighted by exp(similarity /
temperature) and by the inverse share of its class (so the vote is class-balanced, as the heads are), and gives
the log-odds of "unsafe" among them. K, the temperature and the vote's weight in the sum are picked with the
threshold on the validation fold.

The vectors ship as int8 with a scale per row (a quarter of float32's size; the vote it gives matched float32's
on the validation fold and the test split) and are held as float32 once loaded (15 MB for 10,000 prompts).
A check costs one matrix-vector product over them: about a millisecond of CPU.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from conflux.errors import ConfluxError

NEIGHBOURS_PATH = Path(__file__).with_name("safety_neighbours.npz")
F32 = npt.NDArray[np.float32]
CLIP = 0.02  # the vote's share of unsafe is kept within [CLIP, 1 - CLIP]: log-odds within +-3.9


class NeighboursError(ConfluxError):
    """The neighbours' file is missing or malformed."""


def quantize(vectors: F32) -> tuple[npt.NDArray[np.int8], F32]:
    """int8 values and a scale per row: row i is approximately values[i] * scales[i]."""
    scales = (np.abs(vectors).max(axis=1, keepdims=True) / 127).astype(np.float32)
    scales[scales == 0] = 1.0
    return np.round(vectors / scales).astype(np.int8), scales


@dataclass(frozen=True)
class Neighbours:
    values: npt.NDArray[np.int8]  # (n, dim), as shipped
    scales: F32  # (n, 1)
    unsafe: npt.NDArray[np.bool_]  # (n,)
    k: int
    temperature: float
    vectors: F32 = field(init=False, repr=False)  # values * scales, what the vote reads
    # Each neighbour's weight by its class, 0.5 / (its class's share): the vote is class-balanced.
    class_weight: tuple[float, float] = field(init=False, repr=False)  # (safe, unsafe)

    def __post_init__(self) -> None:
        object.__setattr__(self, "vectors", (self.values.astype(np.float32) * self.scales).astype(np.float32))
        prior = float(self.unsafe.mean()) if len(self.unsafe) else 0.5
        object.__setattr__(self, "class_weight", (0.5 / max(1 - prior, 1e-9), 0.5 / max(prior, 1e-9)))

    @classmethod
    def of(cls, vectors: F32, unsafe: npt.NDArray[np.bool_], k: int, temperature: float) -> Neighbours:
        """From float vectors, through the int8 rounding of the shipped file (the trainer calibrates these)."""
        values, scales = quantize(np.asarray(vectors, dtype=np.float32))
        return cls(values, scales, np.asarray(unsafe, dtype=bool), k, temperature)

    def logits(self, x: Any) -> F32:
        """The vote's log-odds of "unsafe" for each row of `x` (unit-length embeddings, (m, dim))."""
        q = np.asarray(x, dtype=np.float32).reshape(-1, self.vectors.shape[1])
        k = min(self.k, len(self.vectors))
        sims = q @ self.vectors.T
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        near = np.take_along_axis(sims, idx, axis=1)
        label = self.unsafe[idx]
        # exp((s - max) / T): the same weights up to a common factor, without overflow at small temperatures
        weight = np.exp((near - near.max(axis=1, keepdims=True)) / self.temperature)
        weight *= np.where(label, self.class_weight[1], self.class_weight[0])
        share = np.clip((weight * label).sum(axis=1) / weight.sum(axis=1), CLIP, 1 - CLIP)
        out: F32 = np.log(share / (1 - share)).astype(np.float32)
        return out

    def digest(self) -> str:
        """Of the neighbours as loaded: the head's threshold was calibrated with exactly these."""
        h = hashlib.sha256(self.values.tobytes())
        h.update(self.scales.astype(np.float32).tobytes())
        h.update(np.packbits(self.unsafe).tobytes())
        h.update(json.dumps([self.k, self.temperature]).encode())
        return h.hexdigest()

    def save(self, path: Path, manifest: dict[str, Any]) -> None:
        """Written whole, then renamed: a reader never sees half a file."""
        buf = io.BytesIO()
        np.savez_compressed(buf, values=self.values, scales=self.scales, unsafe=self.unsafe, k=np.int64(self.k),
                            temperature=np.float64(self.temperature),
                            manifest=np.array(json.dumps(manifest, sort_keys=True)))
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path = NEIGHBOURS_PATH) -> Neighbours:
        try:
            with np.load(path) as z:
                values, scales, unsafe = z["values"], z["scales"].astype(np.float32), z["unsafe"].astype(bool)
                k, temperature = int(z["k"]), float(z["temperature"])
        except (OSError, KeyError, ValueError) as exc:
            raise NeighboursError(f"cannot read the safety neighbours {path}: {exc}; run `make safety-model`") from exc
        n = len(values)
        if values.dtype != np.int8 or values.ndim != 2 or scales.shape != (n, 1) or unsafe.shape != (n,) \
                or k < 1 or temperature <= 0:
            raise NeighboursError(f"{path} is malformed: {values.shape} vectors, {scales.shape} scales, "
                                  f"{unsafe.shape} labels, k={k}, temperature={temperature}")
        return cls(values, scales, unsafe, k, temperature)

    @staticmethod
    def manifest(path: Path = NEIGHBOURS_PATH) -> dict[str, Any]:
        with np.load(path) as z:
            out: dict[str, Any] = json.loads(str(z["manifest"]))
        return out
