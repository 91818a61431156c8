"""Fault tests: kill or stop one part of the running platform and check, from the events themselves (topics
and ClickHouse), that nothing was lost or answered twice. They need the real stack, and each one restores
what it broke so the rest of the session runs on a healthy stack. Run apart with `make test-faults`."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and "tests/faults" in str(item.fspath):
            item.add_marker(pytest.mark.faults)
            item.add_marker(pytest.mark.integration)
            item.fixturenames.insert(0, "stack")
