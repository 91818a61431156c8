"""`make safety-eval`: how well the input-safety checks (rules + the safety classifier over embeddings served by
Triton, exactly the stage's `assess`) separate unsafe prompts from safe ones.

    python -m producers.safety_eval [--out .conflux/bench/safety.json] [--no-prefilter]

Sets: the held-out split of external data (tests/data/external/safety_heldout.jsonl, never used for training
or tuning), the test split, people-scored model answers (safety_answers_{heldout,test}.jsonl, through the
output check's windows), and the team's own sets (tests/data/safety_labelled.jsonl and safety_holdout.jsonl, prompts
only). A prompt
counts as caught when the check names any hazard or attack category (personal data alone is a flag, not a
catch). Reports precision, recall, F1 and false-positive rate overall, recall and category accuracy per
category, figures per source, and the CPU cost of a check beyond the embedding. Needs Triton (`conflux up`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from conflux import taxonomy
from conflux.config import REPO_ROOT, Settings
from conflux.inference import TritonClient
from conflux.safety_model import HEAD_CHARS, OUTPUT_WINDOW_CHARS, SafetyHead, assess, judge_answer_windows
from conflux.safety_prefilter import Prefilter, PrefilterHead
from producers.safety_data import read_jsonl

EXTERNAL = REPO_ROOT / "tests" / "data" / "external"
TEAM_SETS = (
    REPO_ROOT / "tests" / "data" / "safety_labelled.jsonl",
    REPO_ROOT / "tests" / "data" / "safety_holdout.jsonl",
)
BATCH = 32


def scores(pairs: list[tuple[bool, bool]]) -> dict[str, Any]:
    """pairs of (is_unsafe, caught) -> confusion counts, precision, recall, F1, false-positive rate."""
    tp = sum(a and f for a, f in pairs)
    fp = sum(not a and f for a, f in pairs)
    fn = sum(a and not f for a, f in pairs)
    tn = sum(not a and not f for a, f in pairs)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"n": len(pairs), "tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": round(precision, 3),
            "recall": round(recall, 3), "f1": round(f1, 3), "fpr": round(fp / (fp + tn), 3) if fp + tn else 0.0}


async def judge_rows(triton: TritonClient, head: SafetyHead, rows: list[dict[str, Any]],
                     prefilter: PrefilterHead | None) -> tuple[list[dict[str, Any]], float]:
    policy = taxonomy.load().policy()
    out: list[dict[str, Any]] = []
    cpu = 0.0
    for start in range(0, len(rows), BATCH):
        batch = rows[start:start + BATCH]
        vectors = await triton.embed([r["text"][:HEAD_CHARS] for r in batch])
        for row, vec in zip(batch, vectors, strict=True):
            # The stage's own judgement; CPU counted in this process (the embeddings' client side included,
            # Triton's side not).
            t0 = time.process_time()
            a = await assess(triton, head, policy, row["text"], head_vector=vec, prefilter=prefilter)
            cpu += time.process_time() - t0
            verdict, cats, reasons = a.verdict, a.categories, a.reasons
            caught = any(c != "pii" for c in cats)
            out.append({**row, "caught": caught, "verdict": verdict, "predicted": cats, "reasons": reasons,
                        "embedded": a.embedded})
    return out, cpu / max(1, len(rows)) * 1000


def report(results: list[dict[str, Any]]) -> dict[str, Any]:
    pairs = [(r["label"] == "unsafe", r["caught"]) for r in results]
    per_category: dict[str, dict[str, Any]] = {}
    by_cat: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        if r["label"] == "unsafe" and r.get("category"):
            by_cat[r["category"]].append(r)
    for cat, rows in sorted(by_cat.items()):
        caught = [r for r in rows if r["caught"]]
        per_category[cat] = {"n": len(rows), "recall": round(len(caught) / len(rows), 3),
                             "category_accuracy": round(sum(cat in r["predicted"] for r in caught)
                                                        / max(1, len(caught)), 3)}
    by_source: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for r in results:
        by_source[r.get("source", "?")].append((r["label"] == "unsafe", r["caught"]))
    return {"overall": scores(pairs), "per_category": per_category,
            "by_source": {s: {"n": len(p), "caught": sum(f for _, f in p), "unsafe": sum(a for a, _ in p)}
                          for s, p in sorted(by_source.items())},
            # What the prefilter cleared without an embedding (all of a text, for answers all its windows).
            "prefilter_cleared": {label: sum(not r["embedded"] for r in results if r["label"] == label)
                                  for label in ("safe", "unsafe")},
            "missed_sample": [r["text"][:160] for r in results if r["label"] == "unsafe" and not r["caught"]][:15],
            "false_alarm_sample": [r["text"][:160] for r in results if r["label"] == "safe" and r["caught"]][:15]}


async def judge_answers(triton: TritonClient, head: SafetyHead, rows: list[dict[str, Any]],
                        prefilter: PrefilterHead | None) -> list[dict[str, Any]]:
    """Answers as the output check sees them: each window of OUTPUT_WINDOW_CHARS characters (the check reads the
    tail at every window of the stream; here every window position, non-overlapping) by the output head."""
    out = []
    for row in rows:
        text = row["text"]
        windows = [text[max(0, end - OUTPUT_WINDOW_CHARS):end]
                   for end in range(min(len(text), OUTPUT_WINDOW_CHARS), len(text) + 1, OUTPUT_WINDOW_CHARS)]
        if not windows or windows[-1] != text[-OUTPUT_WINDOW_CHARS:]:
            windows.append(text[-OUTPUT_WINDOW_CHARS:])
        judged, embedded = await judge_answer_windows(triton, head, prefilter, windows)
        hit = next((j for j in judged if j.unsafe), None)
        out.append({**row, "caught": hit is not None, "predicted": [hit.category] if hit else [],
                    "embedded": embedded})
    return out


def team_set() -> list[dict[str, Any]]:
    """The team's own prompts (written beside the old rules), in the external sets' labels."""
    return [{"text": r["text"], "label": "unsafe" if r["label"] == "attack" else "safe", "source": "team"}
            for path in TEAM_SETS for r in read_jsonl(path) if r["source"] == "prompt"]


def default_sets() -> dict[str, list[dict[str, Any]]]:
    return {"heldout": read_jsonl(EXTERNAL / "safety_heldout.jsonl"),
            "test": read_jsonl(EXTERNAL / "safety_test.jsonl"), "team": team_set(),
            "answers_heldout": read_jsonl(EXTERNAL / "safety_answers_heldout.jsonl"),
            "answers_test": read_jsonl(EXTERNAL / "safety_answers_test.jsonl")}


async def evaluate(settings: Settings, sets: dict[str, list[dict[str, Any]]], *, prefilter: bool = True
                   ) -> dict[str, Any]:
    triton = TritonClient(settings.triton_grpc_url)
    head = SafetyHead.load()
    first = Prefilter.load() if prefilter else None
    out: dict[str, Any] = {"threshold": head.threshold, "output_threshold": head.output_threshold,
                           "prefilter": first is not None}
    cpu_ms = []
    try:
        for name, rows in sets.items():
            t0 = time.perf_counter()
            if name.startswith("answers"):  # model answers: the output check
                results = await judge_answers(triton, head, rows, first.answer if first else None)
            else:
                results, cpu = await judge_rows(triton, head, rows, first.prompt if first else None)
                cpu_ms.append(cpu)
            out[name] = {**report(results), "seconds": round(time.perf_counter() - t0, 1)}
    finally:
        await triton.close()
    out["cpu_ms_per_check_beyond_embedding"] = round(sum(cpu_ms) / max(1, len(cpu_ms)), 3)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO_ROOT / ".conflux" / "bench" / "safety.json")
    p.add_argument("--no-prefilter", action="store_true", help="every text through the classifier (the baseline)")
    args = p.parse_args(argv)
    result = asyncio.run(evaluate(Settings.from_env(), default_sets(), prefilter=not args.no_prefilter))
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
