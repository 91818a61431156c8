"""Redis from Debian's redis-server package (7.0), append-only file on, data under .conflux/redis."""

from __future__ import annotations

import os
import shutil

from conflux.errors import ServiceError
from conflux.stack.base import Health, LaunchSpec, Progress, Service, run_step


class RedisService(Service):
    name = "redis"
    start_timeout_s = 20.0

    def endpoint(self) -> str:
        return self.settings.redis_url

    def install(self, progress: Progress) -> None:
        if shutil.which("redis-server"):
            return
        if shutil.which("apt-get") is None or os.geteuid() != 0:
            raise ServiceError("redis-server is missing; install it (Debian: apt-get install redis-server)")
        log = self.settings.logs_dir / "install.log"
        run_step(["apt-get", "update", "-qq"], "apt-get update", progress, log=log)
        run_step(["apt-get", "install", "-y", "-qq", "redis-server"], "installing redis-server (Debian)",
                 progress, env={"DEBIAN_FRONTEND": "noninteractive"}, log=log)

    def launch(self) -> LaunchSpec:
        data = self.settings.home / "redis"
        data.mkdir(parents=True, exist_ok=True)
        return LaunchSpec([
            shutil.which("redis-server") or "redis-server",
            "--bind", "127.0.0.1", "--port", str(self.settings.redis_port), "--protected-mode", "yes",
            "--dir", str(data), "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--daemonize", "no", "--logfile", "", "--maxmemory", "1gb", "--maxmemory-policy", "noeviction",
        ])

    def health(self) -> Health:
        import redis

        try:
            client = redis.Redis.from_url(self.settings.redis_url, socket_timeout=1, socket_connect_timeout=1)
            try:
                info = client.info("server")
                return Health(bool(client.ping()), f"redis {info.get('redis_version')}")
            finally:
                client.close()
        except redis.RedisError as exc:
            return Health(False, str(exc))
