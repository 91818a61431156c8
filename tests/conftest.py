"""Shared fixtures. Integration tests run against the real local engines, which this session starts
(idempotently: a stack already brought up by `make up` is reused) and stops again if it started them."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from conflux.config import Settings
from conflux.schemas import SchemaRegistry
from conflux.serde import AvroSerde


@pytest.fixture(scope="session")
def registry() -> SchemaRegistry:
    return SchemaRegistry()


@pytest.fixture(scope="session")
def serde(registry: SchemaRegistry) -> AvroSerde:
    return AvroSerde(registry)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def stack(settings: Settings, request: pytest.FixtureRequest) -> Iterator[Settings]:
    from conflux.stack import manager

    capture = request.config.pluginmanager.getplugin("capturemanager")

    def progress(msg: str) -> None:
        # Installs can take minutes on a new machine (the Weaviate build): show them, not a silent wait.
        with capture.global_and_fixture_disabled():
            print(f"[stack] {msg}", file=sys.stderr, flush=True)

    report = manager.up(settings, progress)
    yield settings
    # Leave a stack the developer started alone; stop only what this session started.
    if report.started:
        manager.down(settings, progress, only=report.started)
