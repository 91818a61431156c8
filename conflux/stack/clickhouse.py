"""ClickHouse: the chdb engine behind ClickHouse's HTTP interface (conflux.clickhouse_server).

Managed only when CONFLUX_CLICKHOUSE_URL points at the local port; a real server by URL is left alone.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from conflux.stack.base import Health, LaunchSpec, Service


class ClickHouseService(Service):
    name = "clickhouse"
    start_timeout_s = 60.0

    def endpoint(self) -> str:
        return self.settings.clickhouse_url

    def launch(self) -> LaunchSpec:
        return LaunchSpec([
            sys.executable, "-m", "conflux.clickhouse_server",
            "--path", str(self.settings.home / "clickhouse"), "--host", "127.0.0.1",
            "--port", str(self.settings.clickhouse_port),
        ], cwd=self.settings.repo_root)

    def health(self) -> Health:
        try:
            with urllib.request.urlopen(f"{self.settings.clickhouse_url.rstrip('/')}/ping", timeout=2) as r:
                body = r.read().decode().strip()
                return Health(body == "Ok.", body)
        except (urllib.error.URLError, OSError) as exc:
            return Health(False, str(exc))
