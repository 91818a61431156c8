"""Dead-lettering: a message a stage cannot process is kept byte for byte with the reason, and the
stage moves on. If the message belonged to a known request, its caller gets an explicit error."""

from __future__ import annotations

import logging
from typing import Any

from conflux.errors import ConfluxError
from conflux.inference import InferenceError
from conflux.serde import dead_letter_record
from streams.deps import Deps

log = logging.getLogger("conflux.streams")


async def dead_letter(deps: Deps, stage: str, topic: str, partition: int, offset: int, value: bytes | None,
                      key: bytes | None, headers: list[tuple[str, bytes]] | None, exc: BaseException) -> None:
    log.warning("%s: dead-lettering %s[%s]@%s: %r", stage, topic, partition, offset, exc)
    envelope = {"tenant_id": "", "conversation_id": "", "request_id": "", "traceparent": None}
    request: dict[str, Any] | None = None
    try:
        decoded = deps.serde.decode(value or b"").record
        envelope = decoded["envelope"]
        # A chat request names where its caller waits; other events (documents) have no caller to answer.
        request = decoded if decoded.get("reply_topic") else None
    except (ConfluxError, KeyError, TypeError, ValueError):
        pass  # undecodable: no request to answer
    dead = deps.envelope(envelope)
    await deps.publisher.publish("conflux.deadletter", dead_letter_record(
        dead, topic=topic, partition=partition, offset=offset, consumer=stage, exc=exc, payload=value, key=key,
        headers=headers), key=topic)
    if request is not None:
        # The caller learns what failed and how to find it, not internal addresses or stack details.
        what = "the model server is unavailable" if isinstance(exc, InferenceError) else "processing failed"
        await deps.finish_with_error(request, f"{stage}: {what}; recorded as dead letter {dead['event_id']}")
