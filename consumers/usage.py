"""Usage and cost per time bucket for one tenant (GET /v1/usage), from the event log: every answer's
`chat.responses` event and every `embeddings.created` event, read `FINAL` so a replayed event never counts
twice. Costs are the events' own `cost_micros`, the numbers budgets were settled with."""

from __future__ import annotations

import datetime as dt
from typing import Any

BUCKETS = {"1h": 3600, "1d": 86400}
GROUPS = {"model": "model", "api_key_id": "key_id"}  # OpenAI's group_by names -> the events' fields


def usage_buckets(client: Any, tenant_id: str, start: int, end: int, bucket: str,
                  group_by: list[str]) -> list[dict[str, Any]]:
    """OpenAI-style buckets [start, end) of width `bucket`, each with one result per group (or one in all)."""
    width = BUCKETS[bucket]
    keys = [GROUPS[g] for g in group_by]
    select_keys = "".join(f", JSONExtractString(body, '{k}') AS {k}" for k in keys)
    group_keys = "".join(f", {k}" for k in keys)
    sql = (f"SELECT toUnixTimestamp(toStartOfInterval(event_time, INTERVAL {width} SECOND)) AS bucket{select_keys}, "
           "count() AS requests, "
           "sum(JSONExtractInt(body, 'prompt_tokens')) AS input_tokens, "
           "sum(JSONExtractInt(body, 'completion_tokens')) AS output_tokens, "
           "sum(JSONExtractInt(body, 'cost_micros')) AS cost_micros, "
           "countIf(JSONExtractString(body, 'error') != '') AS errors, "
           "countIf(JSONExtractBool(body, 'cached')) AS cached_requests, "
           "sum(JSONExtractInt(body, 'cache_saved_micros')) AS cache_saved_micros "
           "FROM events FINAL WHERE tenant_id = {tenant:String} "
           "AND event_type IN ('response_delivered', 'embedding_created') "
           "AND event_time >= {start:DateTime64(6, 'UTC')} AND event_time < {end:DateTime64(6, 'UTC')} "
           f"GROUP BY bucket{group_keys} ORDER BY bucket{group_keys}")
    rows = client.query(sql, parameters={"tenant": tenant_id, "start": _utc(start), "end": _utc(end)})
    by_bucket: dict[int, list[dict[str, Any]]] = {}
    for row in rows.named_results():
        result: dict[str, Any] = {"object": "organization.usage.completions.result",
                                  "num_model_requests": int(row["requests"]),
                                  "input_tokens": int(row["input_tokens"]), "output_tokens": int(row["output_tokens"]),
                                  "cost_usd_micros": int(row["cost_micros"]), "errors": int(row["errors"]),
                                  "cached_requests": int(row["cached_requests"]),
                                  "cache_savings_usd_micros": int(row["cache_saved_micros"])}
        for g in group_by:
            result[g] = row[GROUPS[g]] or None
        by_bucket.setdefault(int(row["bucket"]), []).append(result)
    first = start - start % width
    return [{"object": "bucket", "start_time": t, "end_time": t + width, "results": by_bucket.get(t, [])}
            for t in range(first, end, width)]


def _utc(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)
