"""`make safety-model`, second part: the safety prefilter (conflux/safety_prefilter.py), trained from the same
pinned external data as the classifier (producers/safety_data.py), after producers/safety_train.py.

    python -m producers.prefilter_train [--wheels DIR]

Two heads, each a class-balanced L2 logistic regression over hashed n-grams: prompts (the classifier's train
split) and answers (the output head's rows, through the output check's windows). Each is fitted on 80% of its
rows (by text hash, the fold the classifier's threshold uses) and its threshold set on the other 20%: the highest
that clears at most MAX_UNSAFE_CLEARED of the unsafe rows there. It is not refitted on all rows, so that bound
holds for the weights that ship. Deterministic (full-batch Adam from zeros); seconds, no embedding.
Writes conflux/safety_prefilter.npz with a manifest that tests/unit/test_safety_prefilter.py checks.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from conflux import safety_prefilter
from conflux.safety_prefilter import DIM, PREFILTER_PATH, features
from producers import safety_data, safety_train

F32 = npt.NDArray[np.float32]
# Of the validation fold's unsafe rows, the share a threshold may clear. Each one cleared is a catch lost only
# if the classifier would have caught it; `make safety-eval` shows what the whole check keeps on held-out data.
MAX_UNSAFE_CLEARED = 0.01
L2 = 1e-5
STEPS = 400


@dataclass(frozen=True)
class Rows:
    """Hashed features of many texts, row after row (compressed sparse rows, with numpy alone), each row ending
    in a constant feature for the bias."""

    starts: npt.NDArray[np.int64]  # where each row begins in `cols`/`vals`
    lengths: npt.NDArray[np.int64]
    cols: npt.NDArray[np.int64]
    vals: F32

    @classmethod
    def of(cls, texts: list[str]) -> Rows:
        parts = [features(t) for t in texts]
        cols = np.concatenate([np.r_[idx, DIM] for idx, _ in parts]).astype(np.int64)
        vals = np.concatenate([np.r_[v, 1.0] for _, v in parts]).astype(np.float32)
        lengths = np.array([len(idx) + 1 for idx, _ in parts], dtype=np.int64)
        return cls(np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64), lengths, cols, vals)

    def take(self, mask: npt.NDArray[np.bool_]) -> Rows:
        rows = np.flatnonzero(mask)
        pick = np.concatenate([np.arange(self.starts[r], self.starts[r] + self.lengths[r]) for r in rows])
        lengths = self.lengths[rows]
        return Rows(np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64), lengths, self.cols[pick], self.vals[pick])

    def dot(self, w: F32) -> npt.NDArray[np.float32]:
        out: npt.NDArray[np.float32] = np.add.reduceat(self.vals * w[self.cols], self.starts).astype(np.float32)
        return out

    def tdot(self, r: npt.NDArray[np.float32]) -> F32:
        out: F32 = np.bincount(self.cols, weights=self.vals * np.repeat(r, self.lengths),
                               minlength=DIM + 1).astype(np.float32)
        return out


def fit(x: Rows, y: npt.NDArray[np.float32]) -> F32:
    """Class-balanced L2 logistic regression; returns [w..., b]."""
    pos = float(y.mean())
    weight = np.where(y > 0.5, 0.5 / pos, 0.5 / (1 - pos)).astype(np.float32)

    def grad(w: F32) -> F32:
        p = 1 / (1 + np.exp(-x.dot(w)))
        g = x.tdot(((p - y) * weight).astype(np.float32)) / len(y)
        out: F32 = (g + L2 * np.r_[w[:-1], 0]).astype(np.float32)
        return out

    return safety_train._adam(grad, np.zeros(DIM + 1, dtype=np.float32), STEPS, lr=0.1)


def train_head(rows: list[dict[str, Any]], name: str) -> tuple[F32, float, dict[str, Any]]:
    """Weights, threshold and what the validation fold showed."""
    texts = [r["text"] for r in rows]
    y = np.array([r["label"] == "unsafe" for r in rows], dtype=np.float32)
    fold = safety_train.fold_of(rows)
    x = Rows.of(texts)
    w = fit(x.take(~fold), y[~fold]).astype(np.float16).astype(np.float32)  # as shipped: the threshold fits these
    p = 1 / (1 + np.exp(-x.take(fold).dot(w)))
    unsafe = np.sort(p[y[fold] > 0.5])
    # The highest threshold with at most MAX_UNSAFE_CLEARED of them under it.
    allowed = int(np.floor(MAX_UNSAFE_CLEARED * len(unsafe)))
    threshold = float(unsafe[allowed])
    safe = p[y[fold] < 0.5]
    shown = {"rows": len(rows), "validation_unsafe": len(unsafe), "validation_safe": len(safe),
             "unsafe_cleared": int(np.sum(unsafe < threshold)), "safe_cleared": int(np.sum(safe < threshold))}
    print(f"[prefilter-train] {name}: threshold {threshold:.4f}, {json.dumps(shown)}", file=sys.stderr)
    return w, threshold, shown


def trainer_digest() -> str:
    """What the committed prefilter depends on besides the data: this trainer, the features and the data reader."""
    h = hashlib.sha256()
    for path in (Path(__file__), Path(safety_prefilter.__file__), Path(safety_data.__file__)):
        h.update(path.read_bytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheels", type=Path, default=safety_train.CACHE / "safety-wheels")
    args = p.parse_args(argv)
    wheels = safety_data.fetch_wheels(args.wheels)
    rows = safety_data.build(wheels)["train"]
    answers = safety_data.build_answers(wheels["pyrit"])["train"]
    answer_rows = safety_train.output_rows(answers, rows)
    w_prompt, t_prompt, v_prompt = train_head(rows, "prompt")
    w_answer, t_answer, v_answer = train_head(answer_rows, "answer")
    manifest = {"trainer_sha256": trainer_digest(), "train_sha256": safety_train.digest(rows),
                "answers_train_sha256": safety_train.digest(answers), "max_unsafe_cleared": MAX_UNSAFE_CLEARED,
                "validation": {"prompt": v_prompt, "answer": v_answer}}
    buf = io.BytesIO()  # written whole, then renamed: a reader never sees half a file
    np.savez_compressed(buf, prompt_weights=w_prompt.astype(np.float16), prompt_threshold=np.float32(t_prompt),
                        answer_weights=w_answer.astype(np.float16), answer_threshold=np.float32(t_answer),
                        manifest=np.array(json.dumps(manifest, sort_keys=True)))
    tmp = PREFILTER_PATH.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(PREFILTER_PATH)
    print(json.dumps({"prefilter": str(PREFILTER_PATH), **manifest}))


if __name__ == "__main__":
    main()
