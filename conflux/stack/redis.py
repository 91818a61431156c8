"""Redis from Debian's redis-server package (7.0), append-only file on, data under .conflux/redis."""

from __future__ import annotations

import shutil

from conflux.stack.base import Health, LaunchSpec, Progress, Service, apt_install


class RedisService(Service):
    name = "redis"
    start_timeout_s = 20.0

    def endpoint(self) -> str:
        return self.settings.redis_url

    def install(self, progress: Progress) -> None:
        if not shutil.which("redis-server"):
            apt_install(["redis-server"], progress, self.settings.logs_dir / "install.log")

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
