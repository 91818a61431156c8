"""Everything a stage needs, built once per worker process and passed in (no module-level state)."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from conflux.budget import Budgets
from conflux.config import Settings
from conflux.errors import ConfluxError
from conflux.inference import TritonClient
from conflux.kafka import EventPublisher, ManagedProducer, PendingEvents
from conflux.llm import DEFAULT_TOKENIZER, Tokenizer, Tokenizers
from conflux.models import ModelCatalogue, ModelSpec
from conflux.promserve import Metrics
from conflux.safety_model import SafetyHead
from conflux.safety_prefilter import Prefilter
from conflux.serde import AvroSerde, new_envelope
from conflux.topics import Catalogue
from conflux.vectorstore import VectorStore
from streams.context import ContextStore
from streams.documents import DocumentPresence
from streams.ending import Ending
from streams.once import Claim, Once, expires_at

log = logging.getLogger("conflux.streams")
REPLY_TIMEOUT_S = 5.0


class ReplyTopicError(ConfluxError):
    """The edge instance's reply topic cannot be written (the instance is gone)."""


@dataclass
class Deps:
    settings: Settings
    serde: AvroSerde
    catalogue: Catalogue
    models: ModelCatalogue
    publisher: EventPublisher
    producer: ManagedProducer  # for reply-topic chunks (not in the catalogue)
    ctx: ContextStore
    redis: Any
    vectors: VectorStore | None
    tokenizers: Tokenizers
    triton: TritonClient
    tracer: trace.Tracer
    worker_id: str
    metrics: Metrics
    once: Once
    ready_models: Any  # streams.routing_stage.ReadyModels (typed loosely: that module imports this one)
    model_load: Any  # streams.routing_stage.TritonLoad (likewise)
    safety: SafetyHead  # the safety classifier (input check, output check on the stream)
    budgets: Budgets  # spend holds (routing stage) and their settlement (the request's end)
    documents: DocumentPresence | None = None  # which tenants have documents (None: search for every tenant)
    prefilter: Prefilter | None = None  # the safety check's first pass (None: every text is embedded)
    inference_timeout_s: float = 60.0
    first_token_timeout_s: float = 15.0
    generate_before_verdict: bool = False  # Settings.generate_before_verdict
    retrieval_k: int = 4
    # A chunk less similar to the question than this (cosine, MiniLM) is not about it: left out of the prompt,
    # where a small model would answer from it anyway (and `auto` would route a greeting as a grounded question).
    # Measured on make eval's corpus (926 chunks of Wikipedia and web pages) and its dev questions: greetings and
    # small talk score 0.14-0.19 against their nearest chunk ("who are you?" 0.28), the chunk holding an answer
    # 0.30-0.77, the other chunks of a question's own passage 0.21-0.30.
    retrieval_min_score: float = 0.25
    collection: str = "documents"
    workflows: dict[str, Any] = field(default_factory=dict)  # loaded workflow files by name (streams/workflow)

    @functools.cached_property
    def clickhouse(self) -> Any:
        """The metrics store, for the metrics_query tool: connected on first use (most requests never ask)."""
        from conflux.clickhouse import clickhouse_client

        return clickhouse_client(self.settings)

    def tokenizer(self, model: ModelSpec | None = None) -> Tokenizer:
        """What counts `model`'s tokens; without one (a prompt built before `auto` chose), the default's."""
        return self.tokenizers.get(model.tokenizer if model else DEFAULT_TOKENIZER)

    def envelope(self, src: dict[str, Any]) -> dict[str, Any]:
        """A new event's envelope, continuing the chain of the event `src` came from."""
        return new_envelope(tenant_id=src["tenant_id"], conversation_id=src["conversation_id"],
                            request_id=src["request_id"], producer=self.worker_id,
                            traceparent=src.get("traceparent"))

    async def reply(self, request: dict[str, Any], record: dict[str, Any]) -> None:
        """A token chunk to the reply topic of the edge instance holding the caller."""
        value = self.serde.encode("token_chunk", {**record, "choice": request.get("choice") or 0})
        try:
            # A reply topic can vanish with its edge instance: fail fast instead of blocking the stage.
            await asyncio.wait_for(self.producer.send_and_wait(
                request["reply_topic"], value=value, key=request["envelope"]["request_id"].encode(),
                partition=request.get("reply_partition") or 0), REPLY_TIMEOUT_S)
        except TimeoutError:
            raise ReplyTopicError(f"reply topic {request['reply_topic']} unavailable") from None

    async def stream_chunk(self, request: dict[str, Any], record: dict[str, Any], events: PendingEvents, *,
                           to_tokens: bool = True) -> None:
        """A chunk of a streaming answer (or an agent's step line) to the caller's reply partition and, with
        `to_tokens`, to inference.tokens. Sent, not awaited one by one: ordering holds within the partition and
        latency stays low; `events` has every send acknowledged before the request's final chunk."""
        request_id = request["envelope"]["request_id"]
        await events.wait_open()  # an answer made beside a pending input verdict is held until it allows
        if record["sequence"] == 0:
            # A replay after a crash must know the caller may have seen part of an answer, so the mark is
            # written *before* the first chunk can leave: written beside it, a kill -9 between the two let the
            # replay start the answer again behind the first piece. Dying after the mark but before the send
            # costs an explicit error, never a spliced answer.
            await self.ctx.put(request_id, streamed=True)
        value = self.serde.encode("token_chunk", {**record, "choice": request.get("choice") or 0})
        key = request_id.encode()
        events.track(await self.producer.send(request["reply_topic"], value=value, key=key,
                                              partition=request.get("reply_partition") or 0))
        if to_tokens:
            events.track(await self.producer.send("inference.tokens", value=value, key=key))

    async def reply_final(self, request: dict[str, Any], record: dict[str, Any]) -> None:
        """The caller's final chunk. Its edge may be gone (reply topic unavailable): the request's end is
        still recorded by the caller of this, so that is logged, not raised."""
        try:
            await self.reply(request, record)
        except ReplyTopicError:
            log.warning("caller of %s is gone (reply topic unavailable); recording the end anyway",
                        request["envelope"]["request_id"])

    async def end(self, request: dict[str, Any], ending: Ending, events: PendingEvents | None = None,
                  wait_until: float = 0.0, epoch: int | None = None) -> bool:
        """Ends the request once across workers: its events, then (once every event of the request is
        acknowledged) its budget settled and the caller's final chunk, then the end mark. True when this call
        ended it with `ending`; False when it was ended already, or by a live worker (waited for until
        `wait_until`, so that if that worker dies meanwhile this one ends it), when this call completed the
        ending an earlier holder had recorded and not finished (streams/ending.py), or when the generation under
        `epoch` (the answer this ending closes) was taken over while this worker stalled."""
        request_id = request["envelope"]["request_id"]
        events = events or PendingEvents(self.publisher)
        await events.wait_open()  # nor does an ending (an error, a refusal) leave before the input verdict
        ctx_key = self.ctx.key(request_id)
        claim, left = await self.once.claim_end(request_id, ctx_key, ending.fields(self.serde, self.catalogue),
                                                wait_until, epoch)
        if claim is Claim.TAKEN_OVER:
            log.warning("generation %d of %s was taken over while this worker stalled; leaving its end to the new "
                        "holder", epoch, request_id)
            return False
        if claim in (Claim.BUSY, Claim.DONE):
            return False
        recorded = Ending.recorded(self.serde, left) if left else None
        if recorded is not None:
            log.warning("an earlier end of %s stopped part-way; publishing the ending it recorded again", request_id)
        try:
            await self._publish_ending(request, recorded or ending, events)
        except BaseException:
            await self.once.release("end", request_id)
            raise
        await self.once.ended(request_id, ctx_key)
        return recorded is None

    async def _publish_ending(self, request: dict[str, Any], ending: Ending, events: PendingEvents) -> None:
        for topic, record in ending.events:
            await events.add(topic, record, key=ending.key)
        await events.settle()
        # After the events are acknowledged, so that Redis never records a spend the log does not have. A
        # second settle of the same request (a takeover repeating an ending) finds no hold and changes nothing.
        await self.budgets.settle(request["envelope"]["request_id"], ending.micros, ending.tokens)
        if ending.final is not None:
            await self.reply_final(request, ending.final)

    async def end_request(self, request: dict[str, Any], *, finish_reason: str, text: str = "",
                          error: str | None = None, blocked: bool = False, model: str | None = None,
                          seq: int = 0, latency_ms: float = 0.0, events: PendingEvents | None = None,
                          epoch: int | None = None) -> None:
        """Ends a request that will get no (further) generation - a refusal or an error: its final event
        and, once every event of the request is acknowledged, the caller's final chunk. Usage is 0 when a
        model is named. No answer it can charge for: its hold, if any, is released at no cost."""
        env = request["envelope"]
        usage = 0 if model else None
        await self.end(request, Ending(key=env["conversation_id"], events=[("chat.responses", {
            "envelope": self.envelope(env), "model": request.get("model", ""), "content": text,
            "finish_reason": finish_reason, "blocked": blocked, "error": error, "prompt_tokens": 0,
            "completion_tokens": 0, "citations": [], "latency_ms": latency_ms, "cost_micros": 0,
            "key_id": request.get("key_id") or ""})], final={
            "envelope": self.envelope(env), "sequence": seq, "text": text, "is_final": True,
            "finish_reason": finish_reason, "error": error, "model": model, "prompt_tokens": usage,
            "completion_tokens": usage, "epoch": epoch}), events, expires_at(request, self.inference_timeout_s))

    async def finish_with_error(self, request: dict[str, Any], message: str, finish_reason: str = "error",
                                seq: int = 0, events: PendingEvents | None = None, epoch: int | None = None) -> None:
        """Ends the caller's stream with an explicit error, and records it as the chain's final event."""
        await self.end_request(request, finish_reason=finish_reason, error=message, seq=seq, events=events,
                               epoch=epoch)
