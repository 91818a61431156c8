"""Spend budgets per tenant and per API key, in micro-dollars and tokens, per UTC day or month, in Redis.

Spend is counted for every tenant and key in both windows (day, month), budget or not: a budget set on the
15th then covers the month's spend so far, and the counters can be reconciled with the event log
(consumers/reconcile.py). A request's worst-case cost is *reserved* before any inference (one Lua call: every
budget that applies must have room for it, or nothing is held), then *settled* with the actual cost when the
request ends, whatever the ending. Both are atomic and keyed on the request id, so a replay after a worker
failure neither holds twice nor settles twice. Money is integers only: prices become pico-dollars per token
once (`price_picos`), and a request's cost is rounded up to a whole micro-dollar (`cost_micros`).

Redis layout:
    conflux:spend:<scope>:<window>  hash {spent_micros, spent_tokens, held_micros, held_tokens}
    conflux:resv:<request id>       hash {micros, tokens, keys (JSON list of the spend hashes held against)}
    conflux:resv:open               sorted set: request id by deadline (a hold its worker never settled is
                                    released by `release_expired`, so a lost worker cannot strand a budget)
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from conflux.errors import ConfluxError

PERIODS = ("day", "month")
HOLD_S = 900  # a reservation not settled within this is released (longer than any request may run)
_PERIOD_TTL_S = {"day": 40 * 86400, "month": 400 * 86400}  # spend kept for reconciliation after the window
_SCOPE = re.compile(r"^(tenant:[a-z0-9_-]+|key:[a-z0-9_-]+:key_[0-9a-f]{12})$")


class BudgetError(ConfluxError):
    """A budget setting that cannot be stored (unknown period, negative or missing limit)."""


@dataclass(frozen=True)
class Budget:
    """A limit per period: in micro-dollars, in tokens, or both (None: that dimension is not limited)."""

    period: str
    usd_micros: int | None = None
    tokens: int | None = None

    def __post_init__(self) -> None:
        if self.period not in PERIODS:
            raise BudgetError(f"budget period must be one of {', '.join(PERIODS)}, not {self.period!r}")
        if self.usd_micros is None and self.tokens is None:
            raise BudgetError("a budget needs a limit in USD, in tokens, or both")
        if (self.usd_micros or 0) < 0 or (self.tokens or 0) < 0:
            raise BudgetError("a budget limit cannot be negative")

    def to_json(self) -> str:
        return json.dumps({"period": self.period, "usd_micros": self.usd_micros, "tokens": self.tokens})

    @classmethod
    def from_json(cls, raw: bytes | str | None) -> Budget | None:
        if not raw:
            return None
        doc = json.loads(raw)
        return cls(doc["period"], doc.get("usd_micros"), doc.get("tokens"))


def usd_to_micros(usd: float) -> int:
    """A limit typed in dollars (the CLI), as whole micro-dollars."""
    return round(usd * 1_000_000)


@dataclass(frozen=True)
class Limit:
    """One budget applied to one request: whose (scope), which window of its period, and its limits."""

    scope: str  # tenant:<id> or key:<tenant id>:<key id>
    window: str  # d20261201 or m202612 (UTC)
    usd_micros: int | None
    tokens: int | None

    @property
    def limited(self) -> bool:
        return self.usd_micros is not None or self.tokens is not None

    @property
    def redis_key(self) -> str:
        return f"conflux:spend:{self.scope}:{self.window}"

    def record(self) -> dict[str, Any]:
        """As carried on chat.requests (io.conflux.BudgetLimit)."""
        return {"scope": self.scope, "window": self.window, "usd_micros": self.usd_micros, "tokens": self.tokens}

    @classmethod
    def of(cls, record: dict[str, Any]) -> Limit:
        return cls(record["scope"], record["window"], record.get("usd_micros"), record.get("tokens"))


def window(period: str, at: dt.datetime) -> str:
    return at.strftime("d%Y%m%d" if period == "day" else "m%Y%m")


def renews_at(window_id: str) -> dt.datetime:
    """When the window's budget is whole again: the next UTC midnight, or the first of the next month."""
    if window_id.startswith("d"):
        day = dt.datetime.strptime(window_id[1:], "%Y%m%d").replace(tzinfo=dt.UTC)
        return day + dt.timedelta(days=1)
    month = dt.datetime.strptime(window_id[1:], "%Y%m").replace(tzinfo=dt.UTC)
    return (month + dt.timedelta(days=32)).replace(day=1)


def limits_for(scoped: list[tuple[str, Budget | None]], at: dt.datetime | None = None) -> list[Limit]:
    """The spend counters a request arriving `at` (now) goes to: per scope (tenant, key), its day and its month,
    each with the scope's budget when that budget is for that period (else unlimited: counted only)."""
    now = at or dt.datetime.now(dt.UTC)
    out = []
    for scope, b in scoped:
        if not _SCOPE.match(scope):
            raise BudgetError(f"invalid budget scope {scope!r}")
        for period in PERIODS:
            mine = b is not None and b.period == period
            out.append(Limit(scope, window(period, now), b.usd_micros if b and mine else None,
                             b.tokens if b and mine else None))
    return out


def price_picos(price_per_1k_usd: float) -> int:
    """A catalogue price (USD per 1k tokens) as whole pico-dollars per token: exact for any price given to
    nine decimals per 1k tokens, and integer from here on."""
    return round(price_per_1k_usd * 1_000_000_000)


def cost_micros(prompt_tokens: int, completion_tokens: int, prompt_picos: int, completion_picos: int) -> int:
    """A request's cost in micro-dollars, rounded up (a request is never free because of rounding)."""
    picos = prompt_tokens * prompt_picos + completion_tokens * completion_picos
    return -(-picos // 1_000_000)


@dataclass(frozen=True)
class Standing:
    """What is left of the tightest budget that applies, and when that budget renews."""

    scope: str
    usd_micros_left: int | None
    tokens_left: int | None
    renews: dt.datetime

    @property
    def spent(self) -> bool:
        return self.usd_micros_left == 0 or self.tokens_left == 0

    def describe(self) -> str:
        left = []
        if self.usd_micros_left is not None:
            left.append(f"${self.usd_micros_left / 1_000_000:.6f}")
        if self.tokens_left is not None:
            left.append(f"{self.tokens_left} tokens")
        return (f"the budget of {self.scope.split(':')[0]} '{self.scope.split(':')[-1]}' has "
                f"{' and '.join(left)} left; it renews at {self.renews.isoformat().replace('+00:00', 'Z')}")

    def headers(self) -> dict[str, str]:
        out = {"x-budget-renews": self.renews.isoformat().replace("+00:00", "Z")}
        if self.usd_micros_left is not None:
            out["x-budget-remaining-usd-micros"] = str(self.usd_micros_left)
        if self.tokens_left is not None:
            out["x-budget-remaining-tokens"] = str(self.tokens_left)
        return out


# KEYS: reservation hash, open set, then one spend hash per limit. ARGV: request id, deadline (ms), micros,
# tokens, ttl (s), then per limit: usd limit, token limit (-1: none). Returns {1} when held (or already held
# by this request: a replay), else {0, index of the first limit without room (1-based)}.
_RESERVE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {1, 0} end
local micros, tokens = tonumber(ARGV[3]), tonumber(ARGV[4])
local n = #KEYS - 2
for i = 1, n do
  local s = redis.call('HMGET', KEYS[i + 2], 'spent_micros', 'held_micros', 'spent_tokens', 'held_tokens')
  local usd, tok = tonumber(ARGV[4 + 2 * i]), tonumber(ARGV[5 + 2 * i])
  local used_usd = (tonumber(s[1]) or 0) + (tonumber(s[2]) or 0)
  local used_tok = (tonumber(s[3]) or 0) + (tonumber(s[4]) or 0)
  if (usd >= 0 and used_usd + micros > usd) or (tok >= 0 and used_tok + tokens > tok) then return {0, i} end
end
local held = {}
for i = 1, n do
  redis.call('HINCRBY', KEYS[i + 2], 'held_micros', micros)
  redis.call('HINCRBY', KEYS[i + 2], 'held_tokens', tokens)
  redis.call('EXPIRE', KEYS[i + 2], tonumber(ARGV[5]))
  held[i] = KEYS[i + 2]
end
redis.call('HSET', KEYS[1], 'micros', micros, 'tokens', tokens, 'keys', cjson.encode(held))
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), ARGV[1])
return {1, 0}
"""

# KEYS: reservation hash, open set. ARGV: request id, actual micros, actual tokens. The hold is released and
# the actual cost recorded, once: a second settle of the same request finds no reservation and does nothing.
_SETTLE = """
local r = redis.call('HMGET', KEYS[1], 'micros', 'tokens', 'keys')
if not r[3] then return 0 end
for _, k in ipairs(cjson.decode(r[3])) do
  -- 0 - x, not -x: Lua's -0 is the string "-0", which HINCRBY refuses as "not an integer".
  redis.call('HINCRBY', k, 'held_micros', 0 - tonumber(r[1]))
  redis.call('HINCRBY', k, 'held_tokens', 0 - tonumber(r[2]))
  redis.call('HINCRBY', k, 'spent_micros', tonumber(ARGV[2]))
  redis.call('HINCRBY', k, 'spent_tokens', tonumber(ARGV[3]))
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
"""

OPEN = "conflux:resv:open"


class Budgets:
    """Reserve and settle against the spend counters (a redis.asyncio.Redis)."""

    def __init__(self, redis: Any) -> None:
        self._r = redis
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)

    async def _read(self, limits: list[Limit]) -> list[tuple[Limit, tuple[int, int, int, int]]]:
        """(limit, (spent µ$, held µ$, spent tokens, held tokens)) of each limited one, in one round trip (none
        when no budget applies)."""
        limits = [lim for lim in limits if lim.limited]
        if not limits:
            return []
        async with self._r.pipeline(transaction=False) as pipe:
            for lim in limits:
                pipe.hmget(lim.redis_key, "spent_micros", "held_micros", "spent_tokens", "held_tokens")
            rows = await pipe.execute()
        return [(lim, (int(row[0] or 0), int(row[1] or 0), int(row[2] or 0), int(row[3] or 0)))
                for lim, row in zip(limits, rows, strict=True)]

    async def standing(self, limits: list[Limit]) -> Standing | None:
        """The tightest of these budgets (least left, spent or held), or None when no budget applies (no round
        trip then). The edge asks it before queueing any work."""
        ranked = []
        for lim, counters in await self._read(limits):
            here = Standing(lim.scope, *_left(lim, counters), renews_at(lim.window))
            ranked.append((_share(here, lim), here))
        return min(ranked, key=lambda r: r[0])[1] if ranked else None

    async def reserve(self, request_id: str, limits: list[Limit], micros: int, tokens: int) -> Limit | None:
        """Holds `micros` and `tokens` against every limit, atomically; None when held (or already held by
        this request), else the first limit without room (nothing is then held)."""
        if not limits:
            return None
        args: list[int | str] = [request_id, int((time.time() + HOLD_S) * 1000), micros, tokens,
                                 max(_PERIOD_TTL_S[_period(lim)] for lim in limits)]
        for lim in limits:
            args += [-1 if lim.usd_micros is None else lim.usd_micros, -1 if lim.tokens is None else lim.tokens]
        ok, index = await self._reserve(keys=[f"conflux:resv:{request_id}", OPEN, *(x.redis_key for x in limits)],
                                        args=args)
        return None if int(ok) else limits[int(index) - 1]

    async def settle(self, request_id: str, micros: int, tokens: int) -> bool:
        """Records the request's actual cost and releases its hold; False when there was nothing to settle
        (no budget applied, or already settled)."""
        return bool(int(await self._settle(keys=[f"conflux:resv:{request_id}", OPEN],
                                           args=[request_id, micros, tokens])))

    async def release_expired(self, now: float | None = None) -> int:
        """Releases the holds of requests whose worker never settled them (settled at zero: the platform
        did not deliver an answer it can charge for). Returns how many."""
        due = await self._r.zrangebyscore(OPEN, "-inf", int((now or time.time()) * 1000))
        released = 0
        for rid in due:
            rid = rid.decode() if isinstance(rid, bytes) else rid
            released += await self.settle(rid, 0, 0)
            await self._r.zrem(OPEN, rid)  # also when its reservation was already gone
        return released

    async def report(self, limits: list[Limit]) -> list[dict[str, Any]]:
        """Each budget that applies (limited), with its spend, holds, what is left and when it renews."""
        out = []
        for lim, counters in await self._read(limits):
            spent_usd, held_usd, spent_tok, held_tok = counters
            left_usd, left_tok = _left(lim, counters)
            out.append({"scope": lim.scope.split(":")[0], "period": _period(lim), "window": lim.window,
                        "limit_usd_micros": lim.usd_micros, "limit_tokens": lim.tokens,
                        "spent_usd_micros": spent_usd, "spent_tokens": spent_tok,
                        "held_usd_micros": held_usd, "held_tokens": held_tok,
                        "left_usd_micros": left_usd, "left_tokens": left_tok,
                        "renews_at": int(renews_at(lim.window).timestamp())})
        return out

    async def spent(self, limit: Limit) -> tuple[int, int]:
        """(micro-dollars, tokens) recorded as spent in this limit's window."""
        micros, tokens = await self._r.hmget(limit.redis_key, "spent_micros", "spent_tokens")
        return int(micros or 0), int(tokens or 0)


def _left(lim: Limit, counters: tuple[int, int, int, int]) -> tuple[int | None, int | None]:
    """(µ$, tokens) left under the limit after what is spent and held; None where that dimension is unlimited."""
    spent_usd, held_usd, spent_tok, held_tok = counters
    return (None if lim.usd_micros is None else max(0, lim.usd_micros - spent_usd - held_usd),
            None if lim.tokens is None else max(0, lim.tokens - spent_tok - held_tok))


def _period(lim: Limit) -> str:
    return "day" if lim.window.startswith("d") else "month"


def _share(s: Standing, lim: Limit) -> float:
    """The fraction of a budget left (its tighter dimension), to compare budgets of different sizes."""
    shares = []
    if lim.usd_micros is not None and s.usd_micros_left is not None:
        shares.append(s.usd_micros_left / lim.usd_micros if lim.usd_micros else 0.0)
    if lim.tokens is not None and s.tokens_left is not None:
        shares.append(s.tokens_left / lim.tokens if lim.tokens else 0.0)
    return min(shares, default=1.0)
