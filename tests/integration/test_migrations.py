"""Versioned ClickHouse migrations: applied once each, in order; an applied one may not change."""

from __future__ import annotations

from pathlib import Path

import clickhouse_connect
import pytest

from conflux.config import Settings
from consumers import migrations


def test_migrations_are_applied_once_and_frozen(stack: Settings, tmp_path: Path) -> None:
    client = clickhouse_connect.get_client(dsn=stack.clickhouse_url, compress=False)
    try:
        assert migrations.apply(client) == []  # the sink applied them at start; a second run does nothing
        tables = {r[0] for r in client.query("SHOW TABLES").result_rows}
        assert {"events", "responses", "completions", "responses_mv", "completions_mv"} <= tables
        for m in migrations.load():
            (tmp_path / m.name).write_text(m.sql)
        first = sorted(tmp_path.glob("0001_*.sql"))[0]
        first.write_text(first.read_text() + "\n-- edited after release\n")
        with pytest.raises(migrations.MigrationError, match="changed after it was applied"):
            migrations.apply(client, migrations.load(tmp_path))
    finally:
        client.close()


def test_badly_named_migration_is_refused(tmp_path: Path) -> None:
    (tmp_path / "create_things.sql").write_text("SELECT 1")
    with pytest.raises(migrations.MigrationError, match="NNNN_snake_case"):
        migrations.load(tmp_path)
