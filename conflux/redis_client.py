"""The Redis client of Conflux's long-running processes (edge, worker, sink)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def redis_client(url: str, socket_timeout_s: float = 5.0) -> aioredis.Redis:
    """After Redis restarts, every pooled connection is dead; without a retry each one would fail one
    request (a burst of 503s after recovery). One quick reconnect-and-retry absorbs that; a Redis that is
    really down still fails within about a second, so callers can answer 503 instead of waiting."""
    return aioredis.Redis.from_url(
        url, socket_timeout=socket_timeout_s, socket_connect_timeout=2,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError], health_check_interval=30)
