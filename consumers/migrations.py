"""Versioned ClickHouse migrations: consumers/migrations/NNNN_name.sql, applied in order, once each.

Applied versions are recorded with a checksum; editing an applied migration is refused (write a new one).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conflux.errors import ConfluxError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


class MigrationError(ConfluxError):
    """A migration file is malformed, was edited after being applied, or failed."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        body = "\n".join(line for line in self.sql.splitlines() if not line.strip().startswith("--"))
        return [s.strip() for s in body.split(";") if s.strip()]


def load(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: migrations are named NNNN_snake_case.sql")
        found.append(Migration(int(m.group(1)), path.name, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}")
    return found


def apply(client: Any, migrations: list[Migration] | None = None) -> list[str]:
    """Applies what is missing; returns the names applied. Safe to run from several processes at start."""
    client.command("CREATE TABLE IF NOT EXISTS schema_migrations (version UInt32, name String, checksum String, "
                   "applied_at DateTime64(3, 'UTC') DEFAULT now64(3)) ENGINE = ReplacingMergeTree ORDER BY version")
    rows = client.query("SELECT version, checksum FROM schema_migrations FINAL").result_rows
    done = {int(r[0]): str(r[1]) for r in rows}
    applied = []
    for m in migrations if migrations is not None else load():
        if m.version in done:
            if done[m.version] != m.checksum:
                raise MigrationError(f"{m.name} changed after it was applied; add a new migration instead")
            continue
        for statement in m.statements():
            client.command(statement)
        client.insert("schema_migrations", [[m.version, m.name, m.checksum]],
                      column_names=["version", "name", "checksum"])
        applied.append(m.name)
    return applied
