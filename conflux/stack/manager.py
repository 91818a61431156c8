"""Brings the local stack up, down, and reports on it. Every step is idempotent."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from conflux.config import Settings
from conflux.errors import ConfluxError, ServiceError
from conflux.stack.base import Progress, Service
from conflux.stack.clickhouse import ClickHouseService
from conflux.stack.kafka import KafkaService
from conflux.stack.platform import EdgeService, SinkService, WorkerService
from conflux.stack.redis import RedisService
from conflux.stack.triton import TritonService
from conflux.stack.weaviate import WeaviateService
from conflux.topics import apply_topics, load_catalogue
from conflux.vectorstore import record_fallback, resolve_vector_backend


def services(settings: Settings) -> list[Service]:
    """The services this configuration runs locally; remote ones (set by URL) are not managed."""
    out: list[Service] = [KafkaService(settings), RedisService(settings)]
    if settings.triton_host == "127.0.0.1":
        out.append(TritonService(settings))
    if settings.clickhouse_url.rstrip("/") == f"http://127.0.0.1:{settings.clickhouse_port}":
        out.append(ClickHouseService(settings))
    if resolve_vector_backend(settings) == "weaviate" and \
            settings.weaviate_url.rstrip("/") == f"http://127.0.0.1:{settings.weaviate_port}":
        out.append(WeaviateService(settings))
    if settings.run_platform:
        out += [WorkerService(settings), SinkService(settings), EdgeService(settings)]
    return out


def by_name(settings: Settings, name: str) -> Service:
    for s in services(settings):
        if s.name == name:
            return s
    raise ServiceError(f"no local service named {name!r}")


@dataclass
class UpReport:
    seconds: float = 0.0
    started: list[str] = field(default_factory=list)
    already_running: list[str] = field(default_factory=list)
    fallbacks: list[str] = field(default_factory=list)
    topics_created: list[str] = field(default_factory=list)


def up(settings: Settings, progress: Progress, only: list[str] | None = None) -> UpReport:
    t0 = time.monotonic()
    report = UpReport()
    for d in (settings.home, settings.logs_dir, settings.run_dir):
        d.mkdir(parents=True, exist_ok=True)
    wanted = [s for s in services(settings) if only is None or s.name in only]
    ready: list[Service] = []
    for svc in wanted:
        try:
            svc.install(progress)
        except ServiceError as exc:
            if isinstance(svc, WeaviateService) and settings.vector_backend == "auto":
                msg = f"weaviate unavailable ({exc}); vector store falls back to embedded LanceDB"
                progress(msg)
                report.fallbacks.append(msg)
                record_fallback(settings, str(exc))
                continue
            raise
        ready.append(svc)
    if any(isinstance(s, WeaviateService) for s in ready):
        record_fallback(settings, None)
    engines = [s for s in ready if not isinstance(s, EdgeService | WorkerService | SinkService)]
    _start(engines, report, progress)
    if any(s.name == "kafka" for s in ready):
        catalogue = load_catalogue()
        result = asyncio.run(apply_topics(settings.kafka, catalogue.topics))
        report.topics_created = result.created
        progress(f"topics: {len(result.created)} created, {len(result.altered)} altered, "
                 f"{len(result.unchanged)} unchanged")
    if any(s.name == "redis" for s in ready):
        asyncio.run(_dev_key(settings))
        progress(f"development API key in {settings.home / 'dev-api-key'}")
    # Conflux's own processes need the topics and Redis above, so they start last.
    _start([s for s in ready if isinstance(s, EdgeService | WorkerService | SinkService)], report, progress)
    report.seconds = time.monotonic() - t0
    return report


def _start(group: list[Service], report: UpReport, progress: Progress) -> None:
    for svc in group:
        if svc.pid() is not None:
            report.already_running.append(svc.name)
            continue
        svc.prepare()
        svc.spawn()
        report.started.append(svc.name)
        progress(f"started {svc.name} (log {svc.log_file})")
    for svc in group:
        svc.wait_healthy()
        progress(f"{svc.name} healthy")


async def _dev_key(settings: Settings) -> None:
    import redis.asyncio as aioredis

    from conflux.tenants import ApiKeyStore, ensure_dev_key

    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        await ensure_dev_key(ApiKeyStore(client), settings.home / "dev-api-key")
    finally:
        await client.aclose()


def down(settings: Settings, progress: Progress, only: list[str] | None = None) -> list[str]:
    stopped = []
    # Reverse start order: clients of Kafka stop before Kafka.
    for svc in reversed(services(settings)):
        if only is not None and svc.name not in only:
            continue
        how = svc.stop()
        if how is not None:
            stopped.append(svc.name)
            progress(f"{svc.name}: {how}")
    return stopped


def status(settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for svc in services(settings):
        pid = svc.pid()
        try:
            health = svc.health() if pid is not None else None
        except ConfluxError as exc:  # a probe must report, never crash the status command
            health = None
            detail = str(exc)
        else:
            detail = health.detail if health else "not running"
        out[svc.name] = {
            "healthy": bool(health and health.ok),
            "pid": pid,
            "rss_mb": svc.rss_mb(),
            "endpoint": svc.endpoint(),
            "log": str(svc.log_file),
            "detail": detail,
        }
    if "weaviate" not in out:
        out["vector_store"] = {"healthy": True, "pid": None, "rss_mb": None, "endpoint": str(settings.lancedb_path),
                               "log": None, "detail": "embedded LanceDB (in each process that uses it)"}
    return out
