"""`make semantic-eval`: how well the semantic cache's threshold separates paraphrases from near-misses, on
pairs this team did not write (tests/data/external/paraphrase_{tune,heldout}.jsonl, from `make paraphrase-data`).

    python -m producers.semantic_eval [--out .conflux/bench/semantic.json]

Embeds both sides of every pair with the encoder Triton's minilm_embed serves (the same ONNX graph, in this
process: no stack needed) and matches them as the cache does: a pair "hits" when its questions hold the same
numbers (edge/semantic_cache.literals) and its cosine similarity reaches the threshold. A hit on a "different"
pair is a wrong cached answer.

Tuning reads the tune split only: the lowest threshold a margin above every near-miss there (no wrong hit on
it, and room for closer ones it lacks: a wrong answer is worse than a miss). The held-out split is then scored at that
threshold and at the configured default (conflux.config.SEMANTIC_THRESHOLD), and never used to choose either.
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from conflux.config import REPO_ROOT, SEMANTIC_THRESHOLD
from edge.semantic_cache import comparable, literals, words
from producers.safety_data import read_jsonl

EXTERNAL = REPO_ROOT / "tests" / "data" / "external"
Sims = tuple[npt.NDArray[Any], npt.NDArray[Any]]  # each pair's cosine, and whether the guards allow a hit
MARGIN = 0.05
GRID = [round(0.70 + 0.005 * i, 3) for i in range(61)]  # 0.700 .. 1.000


def similarities(rows: list[dict[str, Any]], encoder: Any) -> Sims:
    """Each pair's cosine similarity, and whether the cache's guards let it be a hit at all: the same numbers
    (else another partition) and comparable lengths."""
    texts = sorted({r["a"] for r in rows} | {r["b"] for r in rows})
    index = {t: i for i, t in enumerate(texts)}
    vectors = np.concatenate([encoder.encode(texts[i:i + 64]) for i in range(0, len(texts), 64)])
    a = vectors[[index[r["a"]] for r in rows]]
    b = vectors[[index[r["b"]] for r in rows]]
    cosine = np.asarray((a * b).sum(axis=1))  # unit-length vectors: the dot product is the cosine
    return cosine, np.array([literals(r["a"]) == literals(r["b"]) and comparable(words(r["a"]), words(r["b"]))
                             for r in rows])


def score(rows: list[dict[str, Any]], sims: Sims, threshold: float) -> dict[str, Any]:
    same = np.array([r["label"] == "paraphrase" for r in rows])
    hit = (sims[0] >= threshold) & sims[1]
    tp, fp = int((hit & same).sum()), int((hit & ~same).sum())
    fn = int((~hit & same).sum())
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    kinds = sorted({r["kind"] for r in rows})
    return {"threshold": threshold, "pairs": len(rows), "hits": tp + fp, "true_hits": tp, "wrong_hits": fp,
            "precision": round(precision, 4), "recall": round(recall, 4),
            "hit_rate_by_kind": {k: round(float(hit[[r["kind"] == k for r in rows]].mean()), 4) for k in kinds}}


def tune(rows: list[dict[str, Any]], sims: Sims) -> float:
    """The lowest grid threshold MARGIN above every near-miss the guards let through on the tune split: no
    wrong hit there, and room for unseen near-misses closer than these."""
    different = np.array([r["label"] != "paraphrase" for r in rows]) & sims[1]
    floor = float(sims[0][different].max()) + MARGIN if different.any() else GRID[0]
    return next((t for t in GRID if t >= floor), GRID[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO_ROOT / ".conflux" / "bench" / "semantic.json")
    args = p.parse_args()
    from model_runtime.minilm_onnx import OnnxMiniLMEncoder

    encoder = OnnxMiniLMEncoder(quantize=False)  # what triton_models/minilm_embed serves by default
    tune_rows, held_rows = (read_jsonl(EXTERNAL / f"paraphrase_{s}.jsonl") for s in ("tune", "heldout"))
    t0 = time.perf_counter()
    tune_sims, held_sims = similarities(tune_rows, encoder), similarities(held_rows, encoder)
    chosen = tune(tune_rows, tune_sims)
    same = np.array([r["label"] == "paraphrase" for r in tune_rows])
    result = {
        "conditions": {"encoder": "MiniLM-L6 ONNX (float32), as Triton serves it", "machine": platform.machine(),
                       "source": "contradish 1.34.0 benchmarks (MIT): casual rephrasings vs other questions of "
                       "the same domain", "embed_s": round(time.perf_counter() - t0, 1)},
        "tune_similarity": {"paraphrase_p50": round(float(np.median(tune_sims[0][same])), 4),
                            "different_p50": round(float(np.median(tune_sims[0][~same])), 4),
                            "different_max": round(float(tune_sims[0][~same].max()), 4),
                            "different_max_past_the_guards": round(float(tune_sims[0][~same & tune_sims[1]].max()), 4),
                            "pairs_the_guards_refuse": int((~tune_sims[1]).sum())},
        "chosen": {"rule": f"max guarded near-miss similarity on tune + {MARGIN}",
                   "tune": score(tune_rows, tune_sims, chosen), "heldout": score(held_rows, held_sims, chosen)},
        "default": {"tune": score(tune_rows, tune_sims, SEMANTIC_THRESHOLD),
                    "heldout": score(held_rows, held_sims, SEMANTIC_THRESHOLD)},
        "sweep_tune": [{k: v for k, v in score(tune_rows, tune_sims, t).items() if k != "hit_rate_by_kind"}
                       for t in GRID[::4]],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
