"""The edge's app factory: every dependency is built here and hung on app.state, nothing is global."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from conflux.budget import Budgets
from conflux.clickhouse import clickhouse_client
from conflux.config import Settings
from conflux.ids import ResponseIds, load_secret
from conflux.inference import TritonClient
from conflux.kafka import EventPublisher, ManagedProducer
from conflux.models import load_models
from conflux.ratelimit import RateLimiter
from conflux.redis_client import redis_client
from conflux.reply_topics import heartbeat
from conflux.safety_model import HEAD_PATH, SafetyHead
from conflux.schemas import SchemaRegistry
from conflux.serde import AvroSerde
from conflux.telemetry import setup_tracing
from conflux.tenants import ApiKeyStore
from conflux.topics import apply_topics, load_catalogue
from conflux.vectorstore import open_vector_store
from edge.api_routes import router as api_router
from edge.cache import ResponseCache, fingerprint
from edge.chat import ChatService
from edge.embeddings import EmbeddingService
from edge.errors import install_error_handlers
from edge.load import LoadGauge, RequestLag
from edge.middleware import BodyLimitAndCounts
from edge.moderation import ModerationService
from edge.protocol import ERROR_RESPONSES
from edge.replies import ReplyRouter
from edge.responses import ResponsesService
from edge.routes import router
from edge.semantic_cache import SemanticCache
from edge.workflow_routes import router as workflow_router
from edge.workflows import WorkflowService

MAX_BODY_BYTES = 1024 * 1024


def default_instance_id() -> str:
    return f"edge-{socket.gethostname()}-{os.getpid()}".lower().replace(".", "-")


def create_app(settings: Settings, instance_id: str | None = None, chain_timeout_s: float = 60.0) -> FastAPI:
    instance = instance_id or default_instance_id()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        registry = SchemaRegistry()
        serde = AvroSerde(registry)
        catalogue = load_catalogue(registry=registry)
        reply = catalogue.pattern("chat.replies.{edge_id}").instantiate(edge_id=instance)
        await apply_topics(settings.kafka, [reply])
        tracer = setup_tracing(f"conflux-edge/{instance}").get_tracer("conflux.edge")
        producer = ManagedProducer.of(settings.kafka, linger_ms=0)  # one event per request: no batching
        await producer.start()
        redis = redis_client(settings.redis_url, settings.redis_password)
        publisher = EventPublisher(producer, serde, catalogue, tracer, timeout_s=settings.publish_timeout_s)

        async def dead_letter(msg: Any, exc: Exception) -> None:
            await publisher.publish_undecodable(msg, exc, consumer=instance, producer=instance)

        async def live_epochs(request_ids: list[str]) -> list[int | None]:
            raw = await redis.mget([f"conflux:epoch:{rid}" for rid in request_ids])
            return [int(v) if v is not None else None for v in raw]

        replies = ReplyRouter(settings.kafka, reply.name, serde, dead_letter=dead_letter,
                              live_epochs=live_epochs)
        await replies.start()
        lag = RequestLag(settings.kafka)
        await lag.start()
        load = LoadGauge(lambda: replies.open_requests, settings.edge_max_open, lambda: lag.value,
                         settings.max_request_lag)
        models = load_models()
        app.state.clickhouse = await asyncio.to_thread(clickhouse_client, settings)
        app.state.catalogue = catalogue
        app.state.models = models
        app.state.publisher = publisher
        app.state.keys = ApiKeyStore(redis)
        triton = TritonClient(settings.triton_grpc_url)
        head = SafetyHead.load()
        app.state.moderation = ModerationService(triton, head, RateLimiter(redis), models, redis)
        ids = ResponseIds(load_secret(settings))
        budgets = Budgets(redis)
        app.state.embeddings = EmbeddingService(triton=triton, limiter=RateLimiter(redis), models=models,
                                                publisher=publisher, ids=ids, instance_id=instance, budgets=budgets)
        cache = ResponseCache(redis, fingerprint(models, HEAD_PATH), settings.cache_ttl_s)
        semantic = SemanticCache(open_store=lambda: open_vector_store(settings), responses=cache, embedder=triton,
                                 head=head, redis=redis, threshold=settings.semantic_threshold)
        app.state.chat = chat = ChatService(publisher=publisher, replies=replies, models=models,
                                     limiter=RateLimiter(redis), redis=redis, instance_id=instance,
                                     chain_timeout_s=chain_timeout_s, ids=ids, budgets=budgets,
                                     cache=cache, semantic=semantic, load=load)
        app.state.responses = ResponsesService(chat, redis)
        app.state.workflows = WorkflowService(redis, publisher, models, RateLimiter(redis), budgets, instance)
        # While this runs, its reply topic is not pruned (conflux/reply_topics.py).
        beating = asyncio.create_task(heartbeat(redis, instance))
        try:
            yield
        finally:
            beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beating  # it removes its key before Redis closes
            await replies.stop()
            await lag.stop()
            await producer.stop()
            semantic.close()
            await triton.close()
            await redis.aclose()
            app.state.clickhouse.close()

    app = FastAPI(title="Conflux edge", version="0.1.0", lifespan=lifespan, responses=ERROR_RESPONSES,
                  description="OpenAI-compatible chat API in front of Conflux's event streams.")

    app.state.http_counts = {}
    app.add_middleware(BodyLimitAndCounts, max_body_bytes=MAX_BODY_BYTES, counts=app.state.http_counts)

    install_error_handlers(app)
    app.include_router(router)
    app.include_router(api_router)
    app.include_router(workflow_router)
    return app
