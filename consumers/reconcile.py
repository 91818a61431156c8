"""Budget reconciliation: the spend Redis counted (conflux/budget.py) against the spend the event log holds.

The log's side sums `cost_micros` and tokens of every `chat.responses` and `embeddings.created` event of the
window (reading `events FINAL`, so a replayed event never counts twice), per tenant and per key. The two must
agree exactly once the window's requests have ended and the sink has caught up; a difference is drift, and
every drift is reported. Known sources of it: a request still in flight (its hold is not spend yet, and its
event may not be in ClickHouse yet), a request admitted just before midnight UTC and answered after it (the
counter uses the admission's window, the log the answer's time), and a hold released by `release_expired`
for a request that ended more than budget.HOLD_S after its reservation.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from conflux.budget import renews_at

_SPEND = """
SELECT tenant_id, JSONExtractString(body, 'key_id') AS key_id,
       sum(JSONExtractInt(body, 'cost_micros')) AS micros,
       sum(JSONExtractInt(body, 'prompt_tokens') + JSONExtractInt(body, 'completion_tokens')) AS tokens
FROM events FINAL
WHERE event_type IN ('response_delivered', 'embedding_created')
  AND event_time >= {start:DateTime64(6, 'UTC')} AND event_time < {end:DateTime64(6, 'UTC')}
  {tenant_filter}
GROUP BY tenant_id, key_id
"""


@dataclass(frozen=True)
class Drift:
    scope: str
    window: str
    counted_micros: int  # Redis
    logged_micros: int  # ClickHouse
    counted_tokens: int
    logged_tokens: int

    @property
    def exact(self) -> bool:
        return self.counted_micros == self.logged_micros and self.counted_tokens == self.logged_tokens

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "drift_micros": self.counted_micros - self.logged_micros,
                "drift_tokens": self.counted_tokens - self.logged_tokens, "exact": self.exact}


def window_bounds(window_id: str) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime.strptime(window_id[1:], "%Y%m%d" if window_id.startswith("d") else "%Y%m")
    return start.replace(tzinfo=dt.UTC), renews_at(window_id)


def logged_spend(client: Any, window_id: str, tenant_id: str | None = None) -> dict[str, tuple[int, int]]:
    """(micro-dollars, tokens) per scope (tenant:<id>, key:<tenant>:<key id>) from the event log."""
    start, end = window_bounds(window_id)
    sql = _SPEND.replace("{tenant_filter}", "AND tenant_id = {tenant:String}" if tenant_id else "")
    params: dict[str, Any] = {"start": start, "end": end}
    if tenant_id:
        params["tenant"] = tenant_id
    out: dict[str, tuple[int, int]] = {}
    for tenant, key_id, micros, tokens in client.query(sql, parameters=params).result_rows:
        scopes = [f"tenant:{tenant}"] + ([f"key:{tenant}:{key_id}"] if key_id else [])
        for scope in scopes:
            m, t = out.get(scope, (0, 0))
            out[scope] = (m + int(micros), t + int(tokens))
    return out


async def counted_spend(redis: Any, window_id: str, tenant_id: str | None = None) -> dict[str, tuple[int, int]]:
    """(micro-dollars, tokens) per scope from the Redis spend counters of the window."""
    out: dict[str, tuple[int, int]] = {}
    pattern = f"conflux:spend:tenant:{tenant_id}:{window_id}" if tenant_id else f"conflux:spend:*:{window_id}"
    patterns = [pattern] + ([f"conflux:spend:key:{tenant_id}:*:{window_id}"] if tenant_id else [])
    for p in patterns:
        async for rkey in redis.scan_iter(match=p, count=500):
            name = rkey.decode() if isinstance(rkey, bytes) else rkey
            micros, tokens = await redis.hmget(name, "spent_micros", "spent_tokens")
            scope = name.removeprefix("conflux:spend:").rsplit(":", 1)[0]
            out[scope] = (int(micros or 0), int(tokens or 0))
    return out


async def reconcile(client: Any, redis: Any, window_id: str, tenant_id: str | None = None) -> list[Drift]:
    """Every scope either side knows for the window, with both sides' figures."""
    logged = logged_spend(client, window_id, tenant_id)
    counted = await counted_spend(redis, window_id, tenant_id)
    return [Drift(scope, window_id, *_pair(counted.get(scope), logged.get(scope)))
            for scope in sorted(set(logged) | set(counted))]


def _pair(counted: tuple[int, int] | None, logged: tuple[int, int] | None) -> tuple[int, int, int, int]:
    c, lg = counted or (0, 0), logged or (0, 0)
    return c[0], lg[0], c[1], lg[1]
