"""Precision and recall of the safety checks on a labelled set (tests/data/safety_labelled.jsonl): user
prompts go through the input-safety stage's checks (rules + MiniLM similarity served by Triton), retrieved
documents through the retrieval stage's check (rules). Prints JSON; needs Triton (`conflux up`).

    python -m producers.safety_eval [--data PATH] [--out .conflux/bench/safety.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from conflux.config import REPO_ROOT, Settings
from conflux.inference import TritonClient
from conflux.safety import check_rules
from streams.input_safety import MODEL_THRESHOLD, AttackBank, judge

DEFAULT_DATA = REPO_ROOT / "tests" / "data" / "safety_labelled.jsonl"


def scores(pairs: list[tuple[bool, bool]]) -> dict[str, Any]:
    """pairs of (is_attack, flagged) -> confusion counts, precision, recall (attack = positive class)."""
    tp = sum(a and f for a, f in pairs)
    fp = sum(not a and f for a, f in pairs)
    fn = sum(a and not f for a, f in pairs)
    tn = sum(not a and not f for a, f in pairs)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    return {"n": len(pairs), "tp": tp, "fp": fp, "fn": fn, "tn": tn, "precision": round(precision, 3),
            "recall": round(recall, 3)}


async def evaluate(settings: Settings, rows: list[dict[str, str]]) -> dict[str, Any]:
    triton = TritonClient(settings.triton_grpc_url)
    bank = AttackBank()
    results: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for row in rows:
        rules = check_rules(row["text"])
        if row["source"] == "prompt":
            score = await bank.score(triton, (await triton.embed([row["text"][:2000]]))[0])
            verdict, _, reasons = judge(rules, score)
            flagged = verdict == "BLOCK"
        else:  # documents: what the retrieval stage does with each retrieved chunk
            score, flagged, reasons = 0.0, rules.jailbreak, list(rules.reasons)
        results.append({**row, "flagged": flagged, "score": round(score, 3), "reasons": reasons})
    attack = [(r["label"] == "attack", bool(r["flagged"])) for r in results]
    by_source = {src: scores([(r["label"] == "attack", bool(r["flagged"])) for r in results if r["source"] == src])
                 for src in ("prompt", "document")}
    return {
        "data": len(rows), "benign": sum(r["label"] == "benign" for r in rows), "model_threshold": MODEL_THRESHOLD,
        "overall": scores(attack), "by_source": by_source, "seconds": round(time.perf_counter() - t0, 2),
        "missed": [r["text"] for r in results if r["label"] == "attack" and not r["flagged"]],
        "false_alarms": [r["text"] for r in results if r["label"] == "benign" and r["flagged"]],
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    report = asyncio.run(evaluate(Settings.from_env(), rows))
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
