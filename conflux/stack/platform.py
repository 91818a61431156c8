"""Conflux's own processes in the local stack: the HTTP edge and a chain worker."""

from __future__ import annotations

import sys

from conflux.stack.base import Health, LaunchSpec, Service, http_probe


def redis_heartbeat(redis_url: str, key: str, pid: int | None) -> Health:
    """Healthy when `key` holds this process's pid: a predecessor's beat does not count after a restart."""
    import redis

    try:
        client = redis.Redis.from_url(redis_url, socket_timeout=1)
        try:
            beat = client.get(key)
        finally:
            client.close()
    except redis.RedisError as exc:
        return Health(False, str(exc))
    ok = beat is not None and (beat.decode() if isinstance(beat, bytes) else beat) == str(pid)
    return Health(ok, "heartbeat fresh" if ok else "no heartbeat from this process in the last 10 s")


class EdgeService(Service):
    name = "edge"
    start_timeout_s = 60.0

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.settings.edge_port}/v1"

    def launch(self) -> LaunchSpec:
        return LaunchSpec([sys.executable, "-m", "conflux.cli", "edge", "--port", str(self.settings.edge_port),
                           "--instance-id", "edge-1"], cwd=self.settings.repo_root)

    def health(self) -> Health:
        return http_probe(f"http://127.0.0.1:{self.settings.edge_port}/healthz")


class WorkerService(Service):
    name = "worker"
    start_timeout_s = 90.0
    stop_timeout_s = 30.0

    def endpoint(self) -> str:
        return "Faust agents of the chain (consumer group conflux-chain)"

    def launch(self) -> LaunchSpec:
        return LaunchSpec([sys.executable, "-m", "conflux.cli", "worker", "--worker-id", "worker-1",
                           "--metrics-port", str(self.settings.worker_metrics_port)],
                          cwd=self.settings.repo_root)

    def health(self) -> Health:
        """Healthy once its agents run: they refresh a heartbeat key in Redis every 2 s."""
        return redis_heartbeat(self.settings.redis_url, "conflux:worker:worker-1:heartbeat", self.pid())


class SinkService(Service):
    name = "sink"
    start_timeout_s = 90.0
    stop_timeout_s = 30.0  # it flushes its last batch and commits on SIGTERM

    def endpoint(self) -> str:
        return f"every topic -> ClickHouse table `events` ({self.settings.clickhouse_url})"

    def launch(self) -> LaunchSpec:
        return LaunchSpec([sys.executable, "-m", "conflux.cli", "sink", "--name", "sink-1",
                           "--metrics-port", str(self.settings.sink_metrics_port)],
                          cwd=self.settings.repo_root)

    def health(self) -> Health:
        return redis_heartbeat(self.settings.redis_url, "conflux:sink:sink-1:heartbeat", self.pid())
