"""`conflux demo`: one conversation event through every engine of the running stack, printed as it goes."""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any

from conflux.clickhouse import clickhouse_client
from conflux.config import Settings
from conflux.errors import ConfluxError
from conflux.inference import stream_generate
from conflux.kafka import EventPublisher, ManagedProducer, make_consumer
from conflux.schemas import SchemaRegistry
from conflux.serde import AvroSerde, new_envelope
from conflux.stack.base import Progress
from conflux.telemetry import setup_tracing
from conflux.topics import apply_topics, load_catalogue
from conflux.vectorstore import Chunk, open_vector_store


def toy_vector(text: str, dim: int = 8) -> list[float]:
    """A stable stand-in embedding; the real one (MiniLM via Triton) arrives with retrieval."""
    digest = hashlib.sha256(text.encode()).digest()
    vec = [b / 255.0 - 0.5 for b in digest[:dim]]
    norm = sum(x * x for x in vec) ** 0.5 or 1.0
    return [x / norm for x in vec]


async def run_demo(settings: Settings, progress: Progress) -> int:
    import redis

    registry = SchemaRegistry()
    serde = AvroSerde(registry)
    catalogue = load_catalogue(registry=registry)
    conv, req = f"conv-{uuid.uuid4().hex[:8]}", f"chatcmpl-{uuid.uuid4().hex}"
    event: dict[str, Any] = {
        "envelope": new_envelope(tenant_id="demo", conversation_id=conv, request_id=req, producer="demo"),
        "model": "echo", "messages": [{"role": "user", "content": "Hello Conflux, stream me an answer", "name": None}],
        "stream": True, "max_tokens": 8, "temperature": None, "reply_topic": "chat.replies.demo",
        "reply_partition": None, "user": None, "metadata": {},
    }
    # The demo's reply topic exists like an edge instance's would (auto-creation is off on the broker).
    demo_replies = catalogue.pattern("chat.replies.{edge_id}").instantiate(edge_id="demo")
    await apply_topics(settings.kafka, [demo_replies])
    tracer = setup_tracing("conflux-demo").get_tracer("conflux.demo")
    producer = ManagedProducer.of(settings.kafka)
    await producer.start()
    try:
        where = await EventPublisher(producer, serde, catalogue, tracer).publish("chat.requests", event, key=conv)
    finally:
        await producer.stop()
    progress(f"kafka: PromptSubmitted {req} -> {where.topic}[{where.partition}]@{where.offset}")

    from aiokafka import TopicPartition

    consumer = make_consumer(settings.kafka, None)
    await consumer.start()
    try:
        tp = TopicPartition(where.topic, where.partition)
        consumer.assign([tp])
        consumer.seek(tp, where.offset)
        msg = await consumer.getone()
    finally:
        await consumer.stop()
    decoded = serde.decode(msg.value, expected="prompt_submitted")
    headers = dict(msg.headers)
    request_id = decoded.record["envelope"]["request_id"]
    progress(f"kafka: read back {decoded.name} v{decoded.writer_version}, request {request_id},"
             f" traceparent {headers.get('traceparent', b'MISSING').decode()}")

    t0 = time.perf_counter()
    pieces = [p async for p in stream_generate(settings.triton_grpc_url, "echo",
                                               event["messages"][0]["content"], 8, timeout_s=10)]
    progress(f"triton: echo streamed {len(pieces)} pieces, first after {pieces[0].elapsed_ms:.1f} ms, "
             f"total {(time.perf_counter() - t0) * 1000:.1f} ms: {''.join(p.text for p in pieces)!r}")

    ch = clickhouse_client(settings)
    ch.command("CREATE TABLE IF NOT EXISTS demo_events (event_id String, request_id String, tenant_id String, "
               "event_time DateTime64(6, 'UTC'), kind LowCardinality(String)) "
               "ENGINE = ReplacingMergeTree ORDER BY event_id")
    env = decoded.record["envelope"]
    ch.insert("demo_events", [[env["event_id"], env["request_id"], env["tenant_id"], env["event_time"], decoded.name]],
              column_names=["event_id", "request_id", "tenant_id", "event_time", "kind"])
    rows = ch.query("SELECT count() FROM demo_events FINAL").result_rows[0][0]
    progress(f"clickhouse: stored the event; demo_events holds {rows} rows (engine {ch.server_version})")

    store = open_vector_store(settings)
    try:
        store.ensure_collection("demo", 8)
        docs = ["Kafka keeps every step of a conversation.", "Triton serves the models.",
                "ClickHouse turns events into metrics."]
        store.upsert("demo", [Chunk(f"c{i}", "doc-demo", "demo", t, toy_vector(t), "demo") for i, t in enumerate(docs)])
        hits = store.search("demo", "demo", toy_vector(docs[1]), 2)
        progress(f"vector store ({store.backend}): top hit {hits[0].text!r} score {hits[0].score:.3f}")
    finally:
        store.close()

    r = redis.Redis.from_url(settings.redis_url)
    try:
        n = r.incr("conflux:demo:runs")
        progress(f"redis: demo has run {n} times")
    except redis.RedisError as exc:
        raise ConfluxError(f"redis: {exc}") from exc
    finally:
        r.close()
    progress("demo complete: every engine answered")
    return 0
