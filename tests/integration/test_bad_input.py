"""Malformed, truncated, oversized and wrong-schema bytes on every topic the platform consumes: each one is
dead-lettered with its reason by every consumer that reads it, and every consumer keeps running."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from conflux.config import Settings
from conflux.serde import HEADER_LEN, MAX_EVENT_BYTES, AvroSerde
from conflux.topics import load_catalogue
from streams import app as chain
from tests.faults.helpers import responses_by_request

REPLY_TOPIC = "chat.replies.edge-1"  # the managed edge's own reply topic


def sample(schema: Any) -> Any:
    """A minimal valid value of an Avro schema (nulls, zeros, empties, first enum symbols)."""
    if isinstance(schema, list):
        return None if "null" in schema else sample(schema[0])
    if isinstance(schema, str):
        return {"null": None, "boolean": False, "int": 0, "long": 0, "float": 0.0, "double": 0.0,
                "bytes": b"", "string": ""}[schema]
    kind = schema["type"]
    if schema.get("logicalType", "").startswith("timestamp"):
        return datetime.now(UTC)
    if kind == "record":
        return {f["name"]: sample(f["type"]) for f in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][0]
    if kind == "array":
        return []
    if kind == "map":
        return {}
    return sample(kind)


def bad_messages(serde: AvroSerde, schema: str) -> dict[str, bytes]:
    valid = serde.encode(schema, sample(serde.registry.get(schema).parsed))
    other = "feedback_given" if schema != "feedback_given" else "prompt_submitted"
    return {
        "malformed": os.urandom(64),
        "truncated": valid[: HEADER_LEN + (len(valid) - HEADER_LEN) // 2],
        "oversized": valid[:HEADER_LEN] + b"\x00" * (MAX_EVENT_BYTES + 1024),
        "wrong_schema": serde.encode(other, sample(serde.registry.get(other).parsed)),
    }


def consumers_of(topic: str) -> set[str]:
    """Who must dead-letter a bad message on `topic`: the chain stage reading it, the sink, the edge."""
    if topic == REPLY_TOPIC:
        return {"edge-1"}
    # The consumer a dead letter names is the agent: the module's STAGE where it has one (streams/app.py).
    stages = {m.SOURCE: getattr(m, "STAGE", m.__name__.rsplit(".", 1)[-1]) for m, _ in chain.STAGES}
    return {"clickhouse-sink", *([stages[topic]] if topic in stages else [])}


async def test_bad_bytes_on_every_consumed_topic_are_dead_lettered(stack: Settings, serde: AvroSerde) -> None:
    catalogue = load_catalogue()
    targets = {t.name: t.schema for t in catalogue.topics if t.name != "conflux.deadletter"}
    targets[REPLY_TOPIC] = "token_chunk"
    reader = AIOKafkaConsumer(bootstrap_servers=stack.kafka_bootstrap, enable_auto_commit=False,
                              fetch_max_bytes=64 * 1024 * 1024)
    await reader.start()
    partitions = [TopicPartition("conflux.deadletter", p)
                  for p in range(catalogue.get("conflux.deadletter").partitions)]
    reader.assign(partitions)
    starts = await reader.end_offsets(partitions)
    for tp, off in starts.items():
        reader.seek(tp, off)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all",
                                max_request_size=MAX_EVENT_BYTES + 64 * 1024)
    await producer.start()
    sent: dict[tuple[str, int], str] = {}  # (topic, offset) -> kind, all on partition 0
    try:
        for topic, schema in targets.items():
            for kind, value in bad_messages(serde, schema).items():
                meta = await producer.send_and_wait(topic, value=value, key=b"bad-input", partition=0)
                sent[(topic, meta.offset)] = kind
    finally:
        await producer.stop()

    wanted = {(topic, off, who) for (topic, off) in sent for who in consumers_of(topic)}
    got: dict[tuple[str, int, str], dict[str, Any]] = {}
    deadline = time.monotonic() + 90
    try:
        while not wanted <= set(got) and time.monotonic() < deadline:
            batch = await reader.getmany(timeout_ms=1000)
            for msgs in batch.values():
                for m in msgs:
                    rec = serde.decode(m.value, expected="dead_letter").record
                    if rec["source_partition"] == 0 and (rec["source_topic"], rec["source_offset"]) in sent:
                        got[(rec["source_topic"], rec["source_offset"], rec["consumer"])] = rec
    finally:
        await reader.stop()
    missing = sorted(wanted - set(got))
    assert not missing, f"{len(missing)} of {len(wanted)} not dead-lettered, e.g. {missing[:6]}"
    reasons = {"malformed": "NotSingleObject", "truncated": "MalformedPayload", "oversized": "MalformedPayload",
               "wrong_schema": "WrongEvent"}
    for (topic, off, _), rec in got.items():
        assert rec["error_type"].startswith(reasons[sent[(topic, off)]]), rec["error_type"]
        assert rec["reason"] and len(rec["payload"]) <= 256 * 1024
    # Every consumer kept running: a chat goes through the chain, the edge and into ClickHouse.
    key = (stack.home / "dev-api-key").read_text().strip()
    r = httpx.post(f"http://127.0.0.1:{stack.edge_port}/v1/chat/completions", timeout=60,
                   headers={"Authorization": f"Bearer {key}"},
                   json={"model": "echo", "max_tokens": 3, "messages": [{"role": "user", "content": "still alive"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "still alive still"
    assert r.json()["id"] in await asyncio.to_thread(responses_by_request, stack, [r.json()["id"]])
    print(f"bad input: {len(sent)} bad messages on {len(targets)} topics, {len(got)} dead letters")
