"""The ClickHouse client every Conflux process uses: a server by URL, or chdb in-process (`chdb:///path`)."""

from __future__ import annotations

from typing import Any

from conflux.config import Settings


def clickhouse_client(settings: Settings) -> Any:
    import clickhouse_connect

    if settings.clickhouse_url.startswith("chdb://"):
        return clickhouse_connect.get_client(interface="chdb", path=settings.clickhouse_url[len("chdb://"):])
    # No session id: the edge shares one client across threads, and a server locks a session per query.
    auth: dict[str, Any] = {"username": settings.clickhouse_user, "password": settings.clickhouse_password} \
        if settings.clickhouse_user else {}
    return clickhouse_connect.get_client(dsn=settings.clickhouse_url, **auth, compress=False,
                                         send_receive_timeout=60, connect_timeout=5, autogenerate_session_id=False)
