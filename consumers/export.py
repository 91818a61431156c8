"""Training data from the event log (the data flywheel): `conflux export`.

Supervised fine-tuning records (OpenAI chat JSONL) come from answers with positive feedback, or from human
corrections; preference pairs (OpenAI DPO JSONL) come from corrections (correction over original) and from
ratings of answers to the same prompt. Blocked and errored exchanges are dropped, answers the quality stage found
hallucinated (or less grounded than --min-grounded) never become SFT records, personal data is scrubbed,
exact and near duplicates are removed. Parquet twins of both files carry each record's lineage (the event
ids it was built from); summary.json states how many records passed each filter.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from conflux.errors import ConfluxError
from conflux.safety import scrub_pii

Progress = Callable[[str], None]


class ExportError(ConfluxError):
    """The export's inputs or destination are unusable."""


@dataclass
class Exchange:
    request_id: str
    tenant_id: str
    messages: list[dict[str, str]]
    answer: str
    model: str
    blocked: bool
    error: str
    event_ids: list[str]
    thumbs_up: bool | None = None
    rating: int | None = None
    correction: str | None = None
    feedback_ids: list[str] = field(default_factory=list)
    # The quality stage's scores (quality.scores); None for an answer it did not score (older than the stage).
    grounded: float | None = None
    hallucinated: bool | None = None

    @property
    def positive(self) -> bool:
        return bool(self.thumbs_up) or (self.rating or 0) >= 4

    @property
    def negative(self) -> bool:
        return self.thumbs_up is False or (self.rating is not None and self.rating <= 2)


# Every side of the join is bounded in time (and by tenant), so an export reads the window it exports, not the
# whole history: a prompt precedes its response by at most the request's expiry (about a minute) and a quality
# score follows it by seconds, so an hour either way is a wide margin; feedback may come any time after the
# answer, so it is bounded below only. The table is partitioned by month, and ClickHouse skips every part whose
# event_time range falls outside a bound.
MARGIN_S = 3600
QUERY = """
SELECT r.request_id, r.tenant_id, p.body AS prompt, r.body AS response, r.event_id AS response_event,
       p.event_id AS prompt_event, f.bodies AS feedback, f.ids AS feedback_ids, q.body AS quality
FROM (SELECT request_id, tenant_id, body, event_id FROM events FINAL
      WHERE event_type = 'response_delivered' AND event_time >= {since:DateTime64(6)}
        AND event_time < {until:DateTime64(6)} AND ({tenant:String} = '' OR tenant_id = {tenant:String})) AS r
INNER JOIN (SELECT request_id, body, event_id FROM events FINAL
            WHERE event_type = 'prompt_submitted' AND ({tenant:String} = '' OR tenant_id = {tenant:String})
              AND event_time >= {since:DateTime64(6)} - INTERVAL {margin:UInt32} SECOND
              AND event_time < {until:DateTime64(6)}) AS p
  ON p.request_id = r.request_id
LEFT JOIN (SELECT JSONExtractString(body, 'response_id') AS rid, groupArray(body) AS bodies,
                  groupArray(event_id) AS ids
           FROM events FINAL WHERE event_type = 'feedback_given' AND event_time >= {since:DateTime64(6)}
             AND ({tenant:String} = '' OR tenant_id = {tenant:String}) GROUP BY rid) AS f
  ON f.rid = r.request_id
LEFT JOIN (SELECT request_id AS qrid, any(body) AS body FROM events FINAL WHERE event_type = 'quality_scored'
             AND ({tenant:String} = '' OR tenant_id = {tenant:String}) AND event_time >= {since:DateTime64(6)}
             AND event_time < {until:DateTime64(6)} + INTERVAL {margin:UInt32} SECOND
           GROUP BY qrid) AS q
  ON q.qrid = r.request_id
ORDER BY r.request_id
"""


def load_exchanges(client: Any, since: datetime, until: datetime, tenant: str | None) -> list[Exchange]:
    result = client.query(QUERY, parameters={"since": since, "until": until, "tenant": tenant or "",
                                             "margin": MARGIN_S})
    out = []
    for rid, tid, prompt_raw, response_raw, response_event, prompt_event, feedback, feedback_ids, quality in \
            result.result_rows:
        prompt, response = json.loads(prompt_raw), json.loads(response_raw)
        ex = Exchange(request_id=rid, tenant_id=tid, answer=response.get("content") or "",
                      messages=[{"role": m["role"], "content": m["content"]} for m in prompt["messages"]],
                      model=response.get("model") or "", blocked=bool(response.get("blocked")),
                      error=response.get("error") or "", event_ids=[prompt_event, response_event])
        if quality:  # a LEFT JOIN without a match gives ''
            scores = json.loads(quality)
            if scores["envelope"]["tenant_id"] == tid:
                ex.grounded, ex.hallucinated = scores.get("grounded"), bool(scores.get("hallucinated"))
        # Later feedback overrides earlier feedback of the same kind.
        for raw, fid in sorted(zip(feedback or [], feedback_ids or [], strict=True),
                               key=lambda x: json.loads(x[0])["envelope"]["event_time"]):
            fb = json.loads(raw)
            if fb["envelope"]["tenant_id"] != tid:
                continue  # feedback from another tenant can never shape this tenant's data
            ex.feedback_ids.append(fid)
            ex.thumbs_up = fb["thumbs_up"] if fb.get("thumbs_up") is not None else ex.thumbs_up
            ex.rating = fb["rating"] if fb.get("rating") is not None else ex.rating
            ex.correction = fb["corrected_answer"] or ex.correction
        out.append(ex)
    return out


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", text.lower())).strip()


def _shingles(text: str, k: int = 3) -> set[str]:
    words = _norm(text).split()
    return {" ".join(words[i:i + k]) for i in range(max(1, len(words) - k + 1))}


def _minhash(shingles: set[str], perms: int = 64) -> tuple[int, ...]:
    return tuple(min(int.from_bytes(hashlib.blake2b(f"{p}:{s}".encode(), digest_size=8).digest(), "big")
                     for s in shingles) for p in range(perms))


class NearDuplicates:
    """MinHash with LSH banding: a record whose estimated Jaccard similarity to a kept one is >= threshold
    is a near duplicate. Bounded work per record (no all-pairs comparison)."""

    def __init__(self, threshold: float = 0.85, perms: int = 64, bands: int = 16) -> None:
        self.threshold = threshold
        self.perms = perms
        self.rows = perms // bands
        self.buckets: dict[tuple[int, tuple[int, ...]], list[tuple[int, ...]]] = {}

    def seen(self, text: str) -> bool:
        sig = _minhash(_shingles(text), self.perms)
        keys = [(b, sig[b * self.rows:(b + 1) * self.rows]) for b in range(self.perms // self.rows)]
        for key in keys:
            for other in self.buckets.get(key, []):
                if sum(a == b for a, b in zip(sig, other, strict=True)) / self.perms >= self.threshold:
                    return True
        for key in keys:
            self.buckets.setdefault(key, []).append(sig)
        return False


def _scrub_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": scrub_pii(m["content"])} for m in messages]


@dataclass(frozen=True)
class QualityFilter:
    """Which answers may teach the next model as they are (SFT from positive feedback), by the quality stage's
    scores. A human correction replaces the answer, so it is never filtered; nor is an answer the stage did not
    score, nor one without sources (grounded is then None)."""

    keep_hallucinated: bool = False
    min_grounded: float = 0.0

    def rejects(self, e: Exchange) -> str | None:
        if e.correction:
            return None
        if e.hallucinated and not self.keep_hallucinated:
            return "hallucinated"
        if e.grounded is not None and e.grounded < self.min_grounded:
            return "below_min_grounded"
        return None


def build(exchanges: list[Exchange], progress: Progress, quality: QualityFilter | None = None,
          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    report: dict[str, Any] = {"selected": len(exchanges)}
    kept = [e for e in exchanges if not e.blocked and not e.error and e.answer]
    report["after_blocked_or_errored_removed"] = len(kept)

    rules = quality or QualityFilter()
    sft_candidates = [e for e in kept if e.correction or e.positive]
    report["sft_with_positive_feedback_or_correction"] = len(sft_candidates)
    why = [rules.rejects(e) for e in sft_candidates]
    report["sft_hallucinated_removed"] = why.count("hallucinated")
    report["sft_below_min_grounded_removed"] = why.count("below_min_grounded")
    sft_candidates = [e for e, w in zip(sft_candidates, why, strict=True) if w is None]
    sft: list[dict[str, Any]] = []
    exact: set[str] = set()
    near = NearDuplicates()
    scrubbed = exact_dupes = near_dupes = 0
    for i, e in enumerate(sft_candidates, 1):
        answer = e.correction or e.answer
        messages = [*_scrub_messages(e.messages), {"role": "assistant", "content": scrub_pii(answer)}]
        scrubbed += messages != [*e.messages, {"role": "assistant", "content": answer}]
        text = "\n".join(m["content"] for m in messages)
        digest = hashlib.sha256(_norm(text).encode()).hexdigest()
        if digest in exact:
            exact_dupes += 1
            continue
        exact.add(digest)
        if near.seen(text):
            near_dupes += 1
            continue
        sft.append({"messages": messages, "lineage": {
            "request_id": e.request_id, "tenant_id": e.tenant_id, "model": e.model,
            "event_ids": e.event_ids + e.feedback_ids, "source": "correction" if e.correction else "positive"}})
        if i % 1000 == 0:
            progress(f"sft: {i}/{len(sft_candidates)} examined")
    report.update(sft_pii_scrubbed=scrubbed, sft_exact_duplicates_removed=exact_dupes,
                  sft_near_duplicates_removed=near_dupes, sft_records=len(sft))

    prefs: list[dict[str, Any]] = []
    for e in kept:  # a correction is preferred over the answer it corrects
        if e.correction and _norm(e.correction) != _norm(e.answer):
            prefs.append(_pair(e.messages, e.correction, e.answer, e.event_ids + e.feedback_ids, e, "correction"))
    by_prompt: dict[str, list[Exchange]] = {}
    for e in kept:
        by_prompt.setdefault(hashlib.sha256(_norm(json.dumps(e.messages)).encode()).hexdigest(), []).append(e)
    for group in by_prompt.values():  # same prompt: a well-rated answer over a poorly rated one
        good = [e for e in group if e.positive and not e.negative]
        bad = [e for e in group if e.negative]
        for g, b in zip(good, bad, strict=False):
            if _norm(g.answer) != _norm(b.answer):
                prefs.append(_pair(g.messages, g.answer, b.answer, g.event_ids + g.feedback_ids + b.event_ids +
                                   b.feedback_ids, g, "rating"))
    report["preference_pairs"] = len(prefs)
    return sft, prefs, report


def _pair(messages: list[dict[str, str]], chosen: str, rejected: str, lineage: list[str], e: Exchange,
          source: str) -> dict[str, Any]:
    return {"input": {"messages": _scrub_messages(messages)},
            "preferred_output": [{"role": "assistant", "content": scrub_pii(chosen)}],
            "non_preferred_output": [{"role": "assistant", "content": scrub_pii(rejected)}],
            "lineage": {"request_id": e.request_id, "tenant_id": e.tenant_id, "model": e.model,
                        "event_ids": lineage, "source": source}}


def write(out_dir: Path, sft: list[dict[str, Any]], prefs: list[dict[str, Any]], report: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out_dir.mkdir(parents=True, exist_ok=True)
    for name, records, keys in (("sft", sft, ("messages",)),
                                ("preferences", prefs, ("input", "preferred_output", "non_preferred_output"))):
        # JSONL in OpenAI's exact format (lineage would break strict validators); Parquet keeps lineage.
        with (out_dir / f"{name}.jsonl").open("w") as f:
            for r in records:
                f.write(json.dumps({k: r[k] for k in keys}, ensure_ascii=False) + "\n")
        table = pa.table({
            **{k: [json.dumps(r[k], ensure_ascii=False) for r in records] for k in keys},
            "request_id": [r["lineage"]["request_id"] for r in records],
            "tenant_id": [r["lineage"]["tenant_id"] for r in records],
            "model": [r["lineage"]["model"] for r in records],
            "source": [r["lineage"]["source"] for r in records],
            "event_ids": [r["lineage"]["event_ids"] for r in records],
        })
        pq.write_table(table, out_dir / f"{name}.parquet")
    (out_dir / "summary.json").write_text(json.dumps(report, indent=2) + "\n")


def run_export(client: Any, out_dir: Path, since: datetime, until: datetime, tenant: str | None,
               progress: Progress | None = None, quality: QualityFilter | None = None) -> dict[str, Any]:
    say = progress or (lambda m: print(m, file=sys.stderr))
    if since >= until:
        raise ExportError(f"--since ({since}) must be before --until ({until})")
    say(f"reading exchanges {since:%Y-%m-%d %H:%M} .. {until:%Y-%m-%d %H:%M} (tenant {tenant or 'all'})")
    exchanges = load_exchanges(client, since, until, tenant)
    say(f"{len(exchanges)} exchanges; filtering, scrubbing, deduplicating")
    sft, prefs, report = build(exchanges, say, quality)
    report.update(since=since.isoformat(), until=until.isoformat(), tenant=tenant or "all")
    write(out_dir, sft, prefs, report)
    say(f"wrote {len(sft)} SFT records and {len(prefs)} preference pairs to {out_dir}")
    return report
