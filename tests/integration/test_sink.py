"""The ClickHouse sink: exactly one row per event, through crashes, outages, duplicates and garbage."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Iterator
from typing import Any

import clickhouse_connect
import pytest

from conflux.config import Settings
from conflux.kafka import make_producer
from conflux.schemas import SchemaRegistry
from conflux.serde import AvroSerde, new_envelope
from conflux.stack import manager

SERDE = AvroSerde(SchemaRegistry())


@pytest.fixture
def ch(stack: Settings) -> Iterator[Any]:
    client = clickhouse_connect.get_client(dsn=stack.clickhouse_url, compress=False)
    yield client
    client.close()


def feedback(tag: str, i: int, event_id: str | None = None) -> bytes:
    env = new_envelope(tenant_id="sinktest", conversation_id=f"c{i}", request_id=f"r{i}", producer=tag)
    if event_id:
        env["event_id"] = event_id
    return SERDE.encode("feedback_given", {"envelope": env, "response_id": f"r{i}", "kind": "RATING",
                                           "thumbs_up": None, "rating": 1 + i % 5, "comment": None,
                                           "corrected_answer": None})


def counts(ch: Any, tag: str) -> tuple[int, int]:
    row = ch.query("SELECT count(), uniqExact(event_id) FROM events WHERE producer = {t:String}",
                   parameters={"t": tag}).result_rows[0]
    return int(row[0]), int(row[1])


def wait_rows(ch: Any, tag: str, n: int, timeout_s: float = 90) -> tuple[int, int]:
    deadline = time.monotonic() + timeout_s
    got = counts(ch, tag)
    while got[1] < n and time.monotonic() < deadline:
        time.sleep(0.5)
        got = counts(ch, tag)
    return got


async def produce(stack: Settings, values: list[bytes], rate_per_s: float | None = None) -> None:
    producer = make_producer(stack.kafka_bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = []
        for i, v in enumerate(values):
            futures.append(await producer.send("chat.feedback", value=v, key=f"k{i}".encode()))
            if rate_per_s and i % 100 == 99:
                await asyncio.sleep(100 / rate_per_s)
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def test_killed_mid_stream_the_sink_resumes_with_exactly_one_row_per_event(stack: Settings, ch: Any) -> None:
    tag = f"sinkkill-{uuid.uuid4().hex[:8]}"
    n = 6000
    sink = manager.by_name(stack, "sink")
    producing = asyncio.create_task(produce(stack, [feedback(tag, i) for i in range(n)], rate_per_s=3000))
    deadline = time.monotonic() + 30
    while counts(ch, tag)[1] == 0 and time.monotonic() < deadline:  # the sink is mid-stream
        await asyncio.sleep(0.1)
    sink.kill()  # SIGKILL: no flush, no commit
    stored_before_restart = counts(ch, tag)[1]
    await producing
    await asyncio.to_thread(manager.up, stack, lambda m: None, ["sink"])
    rows, unique = await asyncio.to_thread(wait_rows, ch, tag, n)
    assert 0 < stored_before_restart < n, "the kill should land mid-stream"
    assert unique == n, f"lost {n - unique} events"
    assert rows == n, f"{rows - n} duplicate rows (replayed after the kill)"


async def test_clickhouse_outage_loses_nothing(stack: Settings, ch: Any) -> None:
    tag = f"sinkdown-{uuid.uuid4().hex[:8]}"
    clickhouse = manager.by_name(stack, "clickhouse")
    clickhouse.stop()
    try:
        await produce(stack, [feedback(tag, i) for i in range(500)])
        await asyncio.sleep(2)  # the sink retries its batch meanwhile
    finally:
        await asyncio.to_thread(manager.up, stack, lambda m: None, ["clickhouse"])
    client = clickhouse_connect.get_client(dsn=stack.clickhouse_url, compress=False)
    try:
        assert await asyncio.to_thread(wait_rows, client, tag, 500) == (500, 500)
    finally:
        client.close()


async def test_duplicates_and_garbage(stack: Settings, ch: Any) -> None:
    tag = f"sinkdup-{uuid.uuid4().hex[:8]}"
    same = str(uuid.uuid4())
    garbage = b"\x00garbage-" + tag.encode()
    values = [feedback(tag, 0, event_id=same), feedback(tag, 0, event_id=same), garbage, feedback(tag, 1)]
    await produce(stack, values)
    assert await asyncio.to_thread(wait_rows, ch, tag, 2) == (2, 2)  # the duplicate became no second row
    deadline = time.monotonic() + 30
    dead = 0
    while dead == 0 and time.monotonic() < deadline:
        dead = ch.query("SELECT count() FROM events WHERE event_type = 'dead_letter' AND "
                        "JSONExtractString(body, 'consumer') = 'clickhouse-sink' AND "
                        "JSONExtractString(body, 'source_topic') = 'chat.feedback' AND "
                        "JSONExtractString(body, 'payload') = {p:String}",
                        parameters={"p": base64.b64encode(garbage).decode()}).result_rows[0][0]
        await asyncio.sleep(0.5)
    assert dead == 1  # the garbage went to the dead-letter topic (and from there into ClickHouse)


def test_every_event_of_a_chat_is_one_row(stack: Settings, ch: Any) -> None:
    import openai

    client = openai.OpenAI(base_url=f"http://127.0.0.1:{stack.edge_port}/v1",
                           api_key=(stack.home / "dev-api-key").read_text().strip())
    r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "count me"}],
                                       max_tokens=4)
    expected = {"prompt_submitted", "safety_verdict", "retrieval_completed", "prompt_built", "routing_decision",
                "inference_requested", "token_chunk", "inference_completed", "response_delivered"}
    deadline = time.monotonic() + 30
    rows: dict[str, int] = {}
    while time.monotonic() < deadline:
        rows = {str(t): int(n) for t, n in ch.query(
            "SELECT event_type, count() FROM events WHERE request_id = {r:String} GROUP BY event_type",
            parameters={"r": r.id}).result_rows}
        if expected <= set(rows) and rows.get("safety_verdict") == 2:
            break
        time.sleep(0.5)
    assert expected <= set(rows), rows
    assert rows["safety_verdict"] == 2 and rows["prompt_submitted"] == 1 and rows["response_delivered"] == 1
