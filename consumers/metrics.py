"""Live metrics from ClickHouse, always scoped to one tenant.

Every query reads `events FINAL`, so a replayed or duplicated event never counts twice. Typed fields come
from the JSON body (the events' schemas are the contract for their names).
"""

from __future__ import annotations

from typing import Any

# Consecutive steps of the chain, as event types, for per-hop latency.
CHAIN = ("prompt_submitted", "safety_verdict", "retrieval_completed", "prompt_built", "routing_decision",
         "inference_requested", "inference_completed", "response_delivered")


def _rows(client: Any, sql: str, tenant: str, minutes: int) -> list[dict[str, Any]]:
    result = client.query(sql, parameters={"tenant": tenant, "minutes": minutes})
    return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]


def _from(table: str = "events", event_type: str | None = None) -> str:
    """FROM ... WHERE for one tenant and the look-back window; `table` may be a typed table (migration 0002)."""
    kind = f" AND event_type = '{event_type}'" if event_type else ""
    return (f"FROM {table} FINAL WHERE tenant_id = {{tenant:String}}{kind} "
            "AND event_time >= now64(6) - toIntervalMinute({minutes:UInt32})")


def event_counts(client: Any, tenant: str, minutes: int) -> list[dict[str, Any]]:
    return _rows(client, f"SELECT event_type, count() AS rows {_from()} GROUP BY event_type ORDER BY event_type",
                 tenant, minutes)


def requests_per_minute(client: Any, tenant: str, minutes: int) -> list[dict[str, Any]]:
    return _rows(client, "SELECT toStartOfMinute(event_time) AS minute, count() AS requests, "
                 "countIf(error != '') AS errors, countIf(blocked = 1) AS blocks "
                 f"{_from('responses')} GROUP BY minute ORDER BY minute", tenant, minutes)


def latency_by_model(client: Any, tenant: str, minutes: int) -> list[dict[str, Any]]:
    # Aliases must not reuse column names: in ClickHouse an alias shadows the column in the whole SELECT.
    rows = _rows(client, "SELECT model, count() AS completions, "
                 "quantiles(0.5, 0.95, 0.99)(ttft_ms) AS ttft_q, "
                 "quantiles(0.5, 0.95, 0.99)(duration_ms) AS duration_q, "
                 "sum(completion_tokens) / greatest(sum(duration_ms) / 1000, 0.001) AS tokens_per_s, "
                 "sum(cost_usd) AS total_cost_usd "
                 f"{_from('completions')} GROUP BY model ORDER BY model", tenant, minutes)
    return [{"model": r["model"], "completions": r["completions"], "ttft_ms": r["ttft_q"],
             "duration_ms": r["duration_q"], "tokens_per_s": r["tokens_per_s"], "cost_usd": r["total_cost_usd"]}
            for r in rows]


def safety_by_category(client: Any, tenant: str, minutes: int) -> list[dict[str, Any]]:
    return _rows(client, "SELECT JSONExtractString(body, 'stage') AS stage, "
                 "JSONExtractString(body, 'verdict') AS verdict, "
                 "arrayJoin(if(empty(JSONExtractArrayRaw(body, 'categories')), ['none'], "
                 "JSONExtract(body, 'categories', 'Array(String)'))) AS category, count() AS verdicts "
                 f"{_from(event_type='safety_verdict')} GROUP BY stage, verdict, category ORDER BY verdicts DESC",
                 tenant, minutes)


def feedback_by_model(client: Any, tenant: str, minutes: int) -> list[dict[str, Any]]:
    return _rows(client, "SELECT r.model AS model, count() AS feedback, "
                 "countIf(f.thumbs = 'true') / greatest(countIf(f.thumbs IN ('true', 'false')), 1) AS thumbs_up_ratio, "
                 "avgIf(f.rating, f.rating > 0) AS mean_rating FROM "
                 "(SELECT JSONExtractString(body, 'response_id') AS response_id, "
                 "JSONExtractRaw(body, 'thumbs_up') AS thumbs, JSONExtractInt(body, 'rating') AS rating "
                 f"{_from(event_type='feedback_given')}) AS f "
                 "INNER JOIN (SELECT request_id, JSONExtractString(body, 'model') AS model FROM events FINAL "
                 "WHERE tenant_id = {tenant:String} AND event_type = 'response_delivered') AS r "
                 "ON f.response_id = r.request_id GROUP BY model ORDER BY model", tenant, minutes)


def per_hop_latency(client: Any, tenant: str, minutes: int) -> list[dict[str, Any]]:
    """Time between consecutive steps of each request, from the events' own timestamps (ms)."""
    cols = ", ".join(f"minIf(event_time, event_type = '{t}') AS t{i}" for i, t in enumerate(CHAIN))
    hops = ", ".join(
        f"quantilesIf(0.5, 0.99)(dateDiff('microsecond', t{i}, t{i + 1}) / 1000, t{i} > 0 AND t{i + 1} > 0) AS h{i}"
        for i in range(len(CHAIN) - 1))
    sql = (f"SELECT {hops}, count() AS requests "
           f"FROM (SELECT request_id, {cols} {_from()} GROUP BY request_id HAVING t0 > 0)")
    row = _rows(client, sql, tenant, minutes)[0]
    return [{"from": CHAIN[i], "to": CHAIN[i + 1], "p50_ms": row[f"h{i}"][0], "p99_ms": row[f"h{i}"][1],
             "requests": row["requests"]} for i in range(len(CHAIN) - 1)]


def recent_requests(client: Any, tenant: str, minutes: int, limit: int = 50) -> list[dict[str, Any]]:
    return _rows(client, "SELECT request_id, event_time, model, finish_reason, blocked, error, latency_ms, "
                 f"completion_tokens {_from('responses')} ORDER BY event_time DESC LIMIT {int(limit)}",
                 tenant, minutes)


def timeline(client: Any, tenant: str, request_id: str) -> list[dict[str, Any]]:
    """Every event of one request in time order, with the time since the previous one (ms)."""
    result = client.query(
        "SELECT event_type, topic, event_time, producer, event_id FROM events FINAL "
        "WHERE tenant_id = {tenant:String} AND request_id = {rid:String} ORDER BY event_time, event_type",
        parameters={"tenant": tenant, "rid": request_id})
    out: list[dict[str, Any]] = []
    for row in result.result_rows:
        item = dict(zip(result.column_names, row, strict=True))
        prev = out[-1]["event_time"] if out else item["event_time"]
        item["since_previous_ms"] = round((item["event_time"] - prev).total_seconds() * 1000, 3)
        out.append(item)
    return out


def cache_by_model(client: Any, tenant: str, minutes: int) -> list[dict[str, Any]]:
    """Cache lookups per model asked for: hits (exact and semantic), misses, hit rate and what the hits saved."""
    return _rows(client, "SELECT JSONExtractString(body, 'model') AS model, count() AS lookups, "
                 "countIf(JSONExtractString(body, 'outcome') IN ('hit', 'semantic_hit')) AS hits, "
                 "countIf(JSONExtractString(body, 'outcome') = 'semantic_hit') AS semantic_hits, "
                 "round(hits / lookups, 4) AS hit_rate, "
                 "sum(JSONExtractInt(body, 'saved_micros')) AS saved_usd_micros "
                 f"{_from(event_type='cache_lookup')} GROUP BY model ORDER BY model", tenant, minutes)


def quality_by_model_day(client: Any, tenant: str, minutes: int) -> list[dict[str, Any]]:
    """Answer quality per model and day (quality.scores): of the answers given sources, how many were grounded
    and how many hallucinated; of all, how many declined, were empty or looped."""
    return _rows(client, "SELECT toDate(event_time) AS day, JSONExtractString(body, 'model') AS model, "
                 "count() AS answers, countIf(JSONExtractInt(body, 'sources') > 0) AS with_sources, "
                 "countIf(JSONExtractBool(body, 'hallucinated')) AS hallucinated, "
                 "round(if(with_sources > 0, hallucinated / with_sources, 0), 4) AS hallucination_rate, "
                 "round(avgIf(JSONExtractFloat(body, 'grounded'), "
                 "JSONExtract(body, 'grounded', 'Nullable(Float64)') IS NOT NULL), 4) AS mean_grounded, "
                 "round(countIf(JSONExtractBool(body, 'refusal')) / answers, 4) AS refusal_rate, "
                 "round(countIf(JSONExtractBool(body, 'empty')) / answers, 4) AS empty_rate, "
                 "round(countIf(JSONExtractFloat(body, 'repetition') > 0.5) / answers, 4) AS repetitive_rate "
                 f"{_from(event_type='quality_scored')} GROUP BY day, model ORDER BY day, model", tenant, minutes)
