"""Training-data export: which exchanges become records, and in which exact format."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from consumers.export import Exchange, NearDuplicates, QualityFilter, build, write


def ex(i: int, prompt: str, answer: str, **kw: object) -> Exchange:
    base: dict[str, object] = {"blocked": False, "error": "", "model": "m"}
    base.update(kw)
    return Exchange(request_id=f"r{i}", tenant_id="t", messages=[{"role": "user", "content": prompt}],
                    answer=answer, event_ids=[f"p{i}", f"a{i}"], feedback_ids=[f"f{i}"], **base)  # type: ignore[arg-type]


LONG = ("Kafka is a distributed, partitioned, replicated commit log. Producers append events to topics, "
        "consumers read them at their own pace and track their position with offsets, and retention keeps "
        "the history so that new consumers can replay it from the beginning.")


def test_filters_and_report() -> None:
    exchanges = [
        ex(1, "What is Apache Kafka used for in a data platform?", LONG, thumbs_up=True),
        ex(2, "What is Apache Kafka used for in a data platform?", LONG, rating=5),  # exact duplicate of 1
        ex(3, "What is Apache Kafka used for in a data platform??", LONG + " Hope that helps.", rating=4),  # near
        ex(4, "Mail me at jane@example.com", "Sure, jane@example.com.", thumbs_up=True),
        ex(5, "Blocked one", "no", thumbs_up=True, blocked=True),
        ex(6, "Errored", "", thumbs_up=True, error="boom"),
        ex(7, "Neutral", "An answer nobody rated."),
        ex(8, "Capital of France?", "Lyon", correction="Paris", thumbs_up=False),
    ]
    sft, prefs, report = build(exchanges, lambda m: None)
    assert report["selected"] == 8 and report["after_blocked_or_errored_removed"] == 6
    assert report["sft_with_positive_feedback_or_correction"] == 5
    assert report["sft_exact_duplicates_removed"] == 1 and report["sft_near_duplicates_removed"] == 1
    assert report["sft_records"] == 3 and report["sft_pii_scrubbed"] == 1
    assert [r["lineage"]["request_id"] for r in sft] == ["r1", "r4", "r8"]
    assert "jane@example.com" not in json.dumps(sft)
    corrected = sft[-1]
    assert corrected["messages"][-1] == {"role": "assistant", "content": "Paris"}
    assert corrected["lineage"]["event_ids"] == ["p8", "a8", "f8"] and corrected["lineage"]["source"] == "correction"
    assert [p["lineage"]["source"] for p in prefs] == ["correction"]
    assert prefs[0]["preferred_output"][0]["content"] == "Paris"
    assert prefs[0]["non_preferred_output"][0]["content"] == "Lyon"


def test_rating_pairs_for_the_same_prompt() -> None:
    good = ex(1, "Explain offsets", "Offsets mark a consumer's position in a partition.", rating=5)
    bad = ex(2, "Explain offsets", "Offsets are a kind of fish.", rating=1)
    _, prefs, _ = build([good, bad], lambda m: None)
    assert len(prefs) == 1 and prefs[0]["lineage"]["source"] == "rating"
    assert "fish" in prefs[0]["non_preferred_output"][0]["content"]


def test_quality_scores_filter_what_may_teach_as_it_is() -> None:
    exchanges = [
        ex(1, "Refund window?", "Refunds are possible for 12 months.", thumbs_up=True, grounded=0.0, hallucinated=True),
        ex(2, "Rate limit?", "The API allows 600 calls per minute [1].", thumbs_up=True, grounded=1.0,
           hallucinated=False),
        ex(3, "Office hours?", "Open nine to five. Closed on Sundays.", thumbs_up=True, grounded=0.5,
           hallucinated=False),
        ex(4, "Say hi", "Hi!", thumbs_up=True),  # not scored, or no sources: never filtered
        ex(5, "Refund window again?", "Refunds are possible for a year.", grounded=0.0, hallucinated=True,
           correction="Within 45 days of purchase."),  # a correction replaces the answer: kept
    ]
    sft, _, report = build(exchanges, lambda m: None)
    assert [r["lineage"]["request_id"] for r in sft] == ["r2", "r3", "r4", "r5"]
    assert report["sft_hallucinated_removed"] == 1 and report["sft_below_min_grounded_removed"] == 0
    sft, _, report = build(exchanges, lambda m: None, QualityFilter(min_grounded=0.75))
    assert [r["lineage"]["request_id"] for r in sft] == ["r2", "r4", "r5"]
    assert report["sft_below_min_grounded_removed"] == 1
    sft, _, _ = build(exchanges, lambda m: None, QualityFilter(keep_hallucinated=True))
    assert [r["lineage"]["request_id"] for r in sft] == ["r1", "r2", "r3", "r4", "r5"]


def test_near_duplicate_detection() -> None:
    nd = NearDuplicates(threshold=0.8)
    assert not nd.seen("the quick brown fox jumps over the lazy dog near the river bank today")
    assert nd.seen("The quick brown fox jumps over the lazy dog near the river bank today!")
    assert not nd.seen("completely different text about kafka partitions and consumer offsets")


def validate_openai_sft(line: str) -> None:
    rec = json.loads(line)
    assert set(rec) == {"messages"}
    msgs = rec["messages"]
    assert msgs and all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in msgs)
    assert all(m["role"] in ("system", "user", "assistant") for m in msgs) and msgs[-1]["role"] == "assistant"


def validate_openai_dpo(line: str) -> None:
    rec = json.loads(line)
    assert set(rec) == {"input", "preferred_output", "non_preferred_output"}
    assert rec["input"]["messages"] and rec["input"]["messages"][-1]["role"] == "user"
    for k in ("preferred_output", "non_preferred_output"):
        assert len(rec[k]) == 1 and rec[k][0]["role"] == "assistant"


def test_files_validate_and_parquet_keeps_lineage(tmp_path: Path) -> None:
    sft, prefs, report = build([ex(1, "Q?", "A.", thumbs_up=True), ex(2, "Cap?", "Lyon", correction="Paris")],
                               lambda m: None)
    write(tmp_path, sft, prefs, report)
    lines = (tmp_path / "sft.jsonl").read_text().splitlines()
    assert len(lines) == 2
    for line in lines:
        validate_openai_sft(line)
    for line in (tmp_path / "preferences.jsonl").read_text().splitlines():
        validate_openai_dpo(line)
    table = pq.read_table(tmp_path / "sft.parquet").to_pylist()
    assert [row["request_id"] for row in table] == ["r1", "r2"] and table[1]["event_ids"] == ["p2", "a2", "f2"]
    assert json.loads((tmp_path / "summary.json").read_text())["sft_records"] == 2
