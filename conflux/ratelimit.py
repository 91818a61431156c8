"""Per-tenant limits on requests and tokens per minute: two token buckets in Redis, checked atomically in
one Lua call before any work is done. A refusal says how long to wait (HTTP Retry-After)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

# KEYS: request bucket, token bucket. ARGV: now_ms, rpm, tpm, tokens wanted.
# Each bucket holds up to one minute's allowance and refills continuously. Both must allow, or neither is taken.
_LUA = """
local now = tonumber(ARGV[1])
local caps = {tonumber(ARGV[2]), tonumber(ARGV[3])}
local want = {1, tonumber(ARGV[4])}
local level = {}
local wait = 0
local too_big = false
for i = 1, 2 do
  local state = redis.call('HMGET', KEYS[i], 'level', 'ts')
  local cap = caps[i]
  local rate = cap / 60000.0
  local l = tonumber(state[1]) or cap
  local ts = tonumber(state[2]) or now
  l = math.min(cap, l + (now - ts) * rate)
  level[i] = l
  if want[i] > cap then
    too_big = true
  end
  if l < want[i] then
    wait = math.max(wait, (want[i] - l) / rate)
  end
end
if too_big then
  return {0, -1, math.floor(level[1]), math.floor(level[2])}
end
if wait > 0 then
  return {0, math.ceil(wait), math.floor(level[1]), math.floor(level[2])}
end
for i = 1, 2 do
  redis.call('HSET', KEYS[i], 'level', level[i] - want[i], 'ts', now)
  redis.call('PEXPIRE', KEYS[i], 120000)
end
return {1, 0, math.floor(level[1] - 1), math.floor(level[2] - want[2])}
"""


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    retry_after_s: int  # 0 when allowed; -1 when the request alone exceeds the per-minute limit
    remaining_requests: int = 0
    remaining_tokens: int = 0
    requests_per_minute: int = 0
    tokens_per_minute: int = 0

    def headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers: the limits, what is left of them, and when they are whole again
        (the buckets refill continuously)."""
        def reset(left: int, cap: int) -> str:
            return _duration((cap - left) * 60 / cap) if cap else "0s"

        return {"x-ratelimit-limit-requests": str(self.requests_per_minute),
                "x-ratelimit-limit-tokens": str(self.tokens_per_minute),
                "x-ratelimit-remaining-requests": str(self.remaining_requests),
                "x-ratelimit-remaining-tokens": str(self.remaining_tokens),
                "x-ratelimit-reset-requests": reset(self.remaining_requests, self.requests_per_minute),
                "x-ratelimit-reset-tokens": reset(self.remaining_tokens, self.tokens_per_minute)}


def _duration(seconds: float) -> str:
    """OpenAI's spelling of a reset time: 20ms, 6s, 1m30s."""
    if seconds < 1:
        return f"{max(0, math.ceil(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    return f"{whole // 60}m{whole % 60}s" if whole >= 60 else f"{whole}s"


class RateLimiter:
    def __init__(self, redis: Any) -> None:
        self._r = redis  # a redis.asyncio.Redis
        self._script = redis.register_script(_LUA)

    async def acquire(self, tenant_id: str, tokens: int, requests_per_minute: int, tokens_per_minute: int) -> Verdict:
        allowed, wait_ms, left_requests, left_tokens = await self._script(
            keys=[f"conflux:rl:{tenant_id}:req", f"conflux:rl:{tenant_id}:tok"],
            args=[int(time.time() * 1000), requests_per_minute, tokens_per_minute, max(0, tokens)],
        )
        wait = 0 if int(allowed) else -1 if int(wait_ms) < 0 else max(1, math.ceil(int(wait_ms) / 1000))
        return Verdict(bool(int(allowed)), wait, max(0, int(left_requests)), max(0, int(left_tokens)),
                       requests_per_minute, tokens_per_minute)
