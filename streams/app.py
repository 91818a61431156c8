"""The chain's Faust app: one agent runs each chat request through the whole pipeline in-process
(streams/pipeline.py); another indexes ingested documents.

Values are Avro single-object bytes (raw to Faust); each agent decodes with the topic's schema, opens a
span in the trace carried by the Kafka headers, and dead-letters what it cannot process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

import faust
from opentelemetry import trace
from redis.exceptions import RedisError

from conflux.budget import Budgets
from conflux.config import Settings
from conflux.errors import ConfluxError, PublishError
from conflux.inference import TritonClient
from conflux.kafka import EventPublisher, ManagedProducer
from conflux.llm import Tokenizers
from conflux.models import load_models
from conflux.promserve import Metrics, serve_metrics
from conflux.redis_client import redis_client
from conflux.safety_model import SafetyHead
from conflux.safety_prefilter import Prefilter
from conflux.schemas import SchemaRegistry
from conflux.serde import AvroSerde
from conflux.telemetry import extract_context, setup_tracing
from conflux.topics import load_catalogue
from conflux.vectorstore import open_vector_store
from streams import ingest, pipeline
from streams.context import ContextStore
from streams.deadletter import dead_letter
from streams.deps import Deps
from streams.documents import DocumentPresence
from streams.offsets import InOrderTransport
from streams.once import Once, done_ttl_s
from streams.routing_stage import ReadyModels, TritonLoad
from streams.workflow import runner as workflow_runner
from streams.workflow import start as workflow_start

log = logging.getLogger("conflux.streams")
# The Faust app id, which is also the workers' Kafka consumer group (infra/k8s/worker.yaml scales on its lag).
CHAIN_GROUP = "conflux-chain"
HEARTBEAT_TTL_S = 10
GIL_SWITCH_INTERVAL_S = 0.001  # see run_worker
RETRY_FOR_S = 30.0
STAGES: tuple[tuple[ModuleType, int], ...] = (
    # (module, concurrent actors): a chat actor holds its request for the whole answer (a Triton stream).
    (pipeline, 32), (ingest, 1),
    # A workflow step holds its actor for a model call (seconds): four side by side per worker.
    (workflow_start, 1), (workflow_runner, 4),
)


class _LazyDeps:
    """Deps need a running event loop; Faust starts agents inside its own, so they are built on first use."""

    def __init__(self, settings: Settings, worker_id: str) -> None:
        self._settings = settings
        self._worker_id = worker_id
        self._deps: Deps | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Deps:
        async with self._lock:
            if self._deps is None:
                self._deps = await build_deps(self._settings, self._worker_id)
            return self._deps


async def build_deps(settings: Settings, worker_id: str) -> Deps:
    registry = SchemaRegistry()
    serde = AvroSerde(registry)
    catalogue = load_catalogue(registry=registry)
    # No linger: with idempotence aiokafka keeps one produce request in flight per partition, so events that
    # arrive while one is out queue and go together in the next. A linger only delayed each batch (A/B at 8
    # streams: 2 ms linger 122-151 ms overhead p50 and 54-69 ms CPU per chat; 0 ms 94-97 ms and 43-46 ms).
    producer = ManagedProducer.of(settings.kafka, linger_ms=0)
    await producer.start()
    redis = redis_client(settings.redis_url, settings.redis_password)
    tracer = setup_tracing(f"conflux-worker/{worker_id}").get_tracer("conflux.streams")
    vectors = open_vector_store(settings)
    vectors.ensure_collection("documents", 384)
    models = load_models()
    tokenizers = Tokenizers()
    for m in models.models:  # loaded (and a split GGUF joined) now, not on a request's path in the event loop
        tokenizers.get(m.tokenizer)
    return Deps(settings=settings, serde=serde, catalogue=catalogue, models=models,
                publisher=EventPublisher(producer, serde, catalogue, tracer), producer=producer,
                ctx=ContextStore(redis), redis=redis, vectors=vectors, tokenizers=tokenizers,
                once=Once(redis, worker_id, done_ttl_s(settings.inference_timeout_s)),
                triton=TritonClient(settings.triton_grpc_url), tracer=tracer, ready_models=ReadyModels(),
                model_load=TritonLoad(settings.triton_metrics_url),
                safety=SafetyHead.load(), prefilter=Prefilter.load(), budgets=Budgets(redis),
                documents=DocumentPresence(vectors, "documents"),
                worker_id=worker_id, metrics=Metrics("conflux_worker", {"instance": worker_id}),
                inference_timeout_s=settings.inference_timeout_s,
                first_token_timeout_s=settings.first_token_timeout_s,
                generate_before_verdict=settings.generate_before_verdict)


def create_worker_app(settings: Settings, worker_id: str | None = None, metrics_port: int = 0) -> faust.App:
    wid = worker_id or f"worker-{socket.gethostname()}-{os.getpid()}"
    app = faust.App(
        CHAIN_GROUP,
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=settings.kafka.faust_credentials(),  # None on PLAINTEXT
        web_enabled=False,
        topic_partitions=8,
        topic_replication_factor=1,
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        table_standby_replicas=0,
    )
    # Before anything reaches app.transport: Faust's own consumer can commit past a request still in flight.
    app.transport = InOrderTransport(app.conf.broker_consumer, app)
    lazy = _LazyDeps(settings, wid)
    for module, concurrency in STAGES:
        _register(app, lazy, module, concurrency)

    if metrics_port:
        @app.task  # type: ignore[untyped-decorator]
        async def metrics_endpoint() -> None:
            deps = await lazy.get()
            await serve_metrics(metrics_port, deps.metrics.render, settings.metrics_host)

    @app.timer(2.0)  # type: ignore[untyped-decorator]
    async def heartbeat() -> None:
        # `conflux status` reads this: the agents' event loop is alive and Redis is reachable. Claims held
        # by this worker count as orphaned once it stops (streams/once.py).
        deps = await lazy.get()
        try:
            await deps.redis.set(f"conflux:worker:{wid}:heartbeat", str(os.getpid()), ex=HEARTBEAT_TTL_S)
            # Which workflow.tasks partitions this worker holds: a fan-out places its items across workers.
            await workflow_runner.publish_partitions(deps, sorted(
                tp.partition for tp in app.consumer.assignment() if tp.topic == workflow_runner.SOURCE))
        except RedisError as exc:  # a missing heartbeat is the report; the timer must not take the worker down
            log.warning("heartbeat failed: %r", exc)

    @app.timer(30.0)  # type: ignore[untyped-decorator]
    async def release_budget_holds() -> None:
        # A request whose worker died and was never replayed would hold its worst case against the budget
        # for ever; any worker may release it (the release is atomic and once).
        deps = await lazy.get()
        try:
            if released := await deps.budgets.release_expired():
                log.warning("released %d budget holds nobody settled", released)
        except RedisError as exc:
            log.warning("budget hold release failed: %r", exc)

    return app


def _register(app: faust.App, lazy: _LazyDeps, module: ModuleType, concurrency: int) -> None:
    stage = getattr(module, "STAGE", module.__name__.rsplit(".", 1)[-1])
    topic = app.topic(module.SOURCE, key_type=bytes, value_type=bytes, key_serializer="raw",
                      value_serializer="raw")
    handle: Callable[[Deps, dict[str, Any]], Awaitable[None]] = module.handle

    async def agent(stream: Any) -> None:
        async for event in stream.events():
            deps = await lazy.get()
            msg = event.message
            headers = list(event.headers.items()) if isinstance(event.headers, dict) else list(event.headers or [])
            try:
                record = deps.serde.decode(event.value or b"", expected=module.EVENT).record
                with deps.tracer.start_as_current_span(f"{stage}", context=extract_context(headers),
                                                       kind=trace.SpanKind.CONSUMER):
                    await _with_retries(stage, handle, deps, record)
                deps.metrics.inc("events_processed_total", help_text="events handled by a stage", stage=stage)
            except Exception as exc:  # an agent must survive any single message
                if not isinstance(exc, ConfluxError | KeyError | TypeError | ValueError):
                    log.exception("%s: unexpected error", stage)
                await _give_up(deps, stage, msg, event.value, event.key, headers, exc)

    agent.__name__ = stage
    app.agent(topic, name=f"conflux.{stage}", concurrency=concurrency)(agent)


async def _with_retries(stage: str, handle: Callable[[Deps, dict[str, Any]], Awaitable[None]], deps: Deps,
                        record: dict[str, Any]) -> None:
    """Runs a stage, retrying while Redis or the broker is unavailable (they come back: a restart, a failover)
    for up to RETRY_FOR_S; a message is dead-lettered only for its own faults or a longer outage. A retry
    may repeat the stage's intermediate events; the request's end happens once (streams/once.py)."""
    deadline = time.monotonic() + RETRY_FOR_S
    delay = 0.2
    while True:
        try:
            await handle(deps, record)
            return
        except (RedisError, PublishError) as exc:
            if time.monotonic() + delay > deadline:
                raise
            # redis-py 8 leaves the message out of repr(): name both.
            log.warning("%s: dependency unavailable, retrying in %.1fs: %s: %s", stage, delay, type(exc).__name__, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def _give_up(deps: Deps, stage: str, msg: Any, value: bytes | None, key: bytes | None,
                   headers: list[tuple[str, bytes]], exc: Exception) -> None:
    """Dead-letters a message the stage could not process, unless it belongs to a request that already has
    its answer (a replay after a failover finds its context gone: that is not a failure)."""
    try:
        rid = deps.serde.decode(value or b"").record["envelope"]["request_id"]
        if rid and await deps.once.is_done("end", rid):
            log.info("%s: skipping a replayed event of ended request %s", stage, rid)
            return
    except (ConfluxError, KeyError, TypeError, RedisError):
        pass
    deps.metrics.inc("dead_letters_total", help_text="events a stage gave up on", stage=stage)
    try:
        await dead_letter(deps, stage, msg.topic, msg.partition, msg.offset, value, key, headers, exc)
    except Exception:  # Kafka or Redis down too: log it; the agent must keep running
        log.exception("%s: could not dead-letter %s[%s]@%s", stage, msg.topic, msg.partition, msg.offset)


def run_worker(settings: Settings, worker_id: str | None = None, metrics_port: int = 0) -> None:
    if os.environ.get("CONFLUX_WORKER_LOOP", "uvloop") == "uvloop":
        import uvloop

        # libuv's loop costs the worker less CPU per request than asyncio's (measured in `make bench`).
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # The worker runs three threads that take turns on the GIL: the event loop, Faust's Kafka consumer (each
    # fetch is handed to the loop across threads) and gRPC's poller (each Triton response likewise). At the
    # default 5 ms switch interval a busy loop kept a fetched request or a token waiting up to 5 ms for the
    # GIL. A/B, worker restarted per setting, three rounds of make bench's echo levels: overhead p50 at c1
    # 32.8/30.9/29.8 -> 30.5/27.8/24.1 ms, at c8 123/113/117 -> 106/106/75 ms, chats/s at c8 34/43/37 ->
    # 37/44/50, CPU per chat at c8 47.6/39.6/44.8 -> 45.0/37.8/33.0 ms.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    app = create_worker_app(settings, worker_id, metrics_port)
    worker = faust.Worker(app, loglevel="info", quiet=True)
    worker.execute_from_commandline()
