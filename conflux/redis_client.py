"""The Redis client of Conflux's long-running processes (edge, worker, sink)."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

MAX_CONNECTIONS = 128  # per process; a burst beyond it waits for a free connection (up to the socket timeout)


def redis_client(url: str, password: str = "", socket_timeout_s: float = 5.0) -> aioredis.Redis:
    """After Redis restarts, every pooled connection is dead; without a retry each one would fail one
    request (a burst of 503s after recovery). One quick reconnect-and-retry absorbs that; a Redis that is
    really down still fails within about a second, so callers can answer 503 instead of waiting.

    The pool blocks when all its connections are busy: redis-py's default pool raises MaxConnectionsError at
    its 100th concurrent command, which turned a burst of 200 chats into 503s although Redis was fine.

    `password` (CONFLUX_REDIS_PASSWORD) is Redis AUTH's; kept out of the URL so that no URL printed anywhere
    carries it."""
    auth = {"password": password} if password else {}
    pool = aioredis.BlockingConnectionPool.from_url(
        url, **auth, max_connections=MAX_CONNECTIONS, timeout=socket_timeout_s, socket_timeout=socket_timeout_s,
        socket_connect_timeout=2, retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError], health_check_interval=30)
    return aioredis.Redis.from_pool(pool)  # owns the pool: aclose() closes its connections
