"""Conflux's own processes in the local stack: the HTTP edge and a chain worker."""

from __future__ import annotations

import sys

from conflux.stack.base import Health, LaunchSpec, Service, http_probe


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
        return LaunchSpec([sys.executable, "-m", "conflux.cli", "worker", "--worker-id", "worker-1"],
                          cwd=self.settings.repo_root)

    def health(self) -> Health:
        """Healthy once its agents run: they refresh a heartbeat key in Redis every 2 s."""
        import redis

        try:
            client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=1)
            try:
                beat = client.get("conflux:worker:worker-1:heartbeat")
            finally:
                client.close()
            # The beat names its process, so a predecessor's beat does not count after a restart.
            ok = beat is not None and (beat.decode() if isinstance(beat, bytes) else beat) == str(self.pid())
            return Health(ok, "heartbeat fresh" if ok else "no heartbeat from this process in the last 10 s")
        except redis.RedisError as exc:
            return Health(False, str(exc))
