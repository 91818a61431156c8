"""Every test in this folder needs the real local stack (started once per session by `stack`)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from conflux.config import Settings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
            item.fixturenames.insert(0, "stack")


@pytest.fixture
async def scratch_topic(stack: Settings) -> AsyncIterator[str]:
    """A throwaway topic (auto-creation is off on the broker), deleted afterwards."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    name = f"test.{uuid.uuid4().hex[:10]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 2, 1)])
        yield name
        await admin.delete_topics([name])
    finally:
        await admin.close()
