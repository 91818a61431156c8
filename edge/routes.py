"""HTTP routes of the edge. Logic lives in edge/chat.py; this module maps it onto OpenAI's API shapes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, StreamingResponse

from conflux.errors import EncodeError
from conflux.serde import new_envelope
from conflux.tenants import AuthError, Tenant
from edge.chat import ChatService, Completion, chain_error
from edge.embeddings import MODEL as EMBEDDING_MODEL
from edge.errors import ApiError, sse
from edge.params import refuse_unsupported, with_tenant_tools
from edge.protocol import ChatCompletionRequest, FeedbackRequest

router = APIRouter()
# Topics producers may write through the HTTP bridge; the chain's internal topics are not among them.
BRIDGE_TOPICS = {"documents.ingest", "chat.feedback"}


def _svc(request: Request) -> ChatService:
    return request.app.state.chat  # type: ignore[no-any-return]


async def _tenant(request: Request, authorization: str | None) -> Tenant:
    key = authorization[7:].strip() if authorization and authorization.lower().startswith("bearer ") else None
    try:
        tenant: Tenant = await request.app.state.keys.authenticate(key)
        return tenant
    except AuthError as exc:
        raise ApiError(401, str(exc), "authentication_error", code="invalid_api_key") from None


def _completion_body(request_id: str, created: int, choices: list[Completion], logprobs: bool) -> dict[str, Any]:
    first = choices[0]
    # n choices answer one prompt: it is counted once, as OpenAI counts it.
    completion_tokens = sum(c.completion_tokens for c in choices)
    return {
        "id": request_id, "object": "chat.completion", "created": created, "model": first.model,
        "choices": [{"index": i, "message": _message(c), "finish_reason": c.finish_reason,
                     "logprobs": _logprobs(c.logprobs) if logprobs else None} for i, c in enumerate(choices)],
        "usage": {"prompt_tokens": first.prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": first.prompt_tokens + completion_tokens},
        # Conflux extension: the retrieved chunks (document#n) the answer was grounded on.
        "citations": first.citations,
    }


def _logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"content": entries, "refusal": None}


def _message(c: Completion) -> dict[str, Any]:
    if c.tool_calls:  # as OpenAI answers a call: no content unless the model also wrote text
        return {"role": "assistant", "content": c.text or None, "tool_calls": c.tool_calls}
    return {"role": "assistant", "content": c.text}


def _tool_call_delta(d: dict[str, Any]) -> dict[str, Any]:
    """A token_chunk tool-call delta in OpenAI's streaming shape: id, type and name on a call's first delta."""
    if d.get("id"):
        return {"index": d["index"], "id": d["id"], "type": "function",
                "function": {"name": d["name"], "arguments": d.get("arguments") or ""}}
    return {"index": d["index"], "function": {"arguments": d.get("arguments") or ""}}


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    return {"status": "ok", "instance": _svc(request).instance_id}


@router.get("/v1/models")
async def list_models(request: Request, authorization: str | None = Header(default=None)) -> dict[str, Any]:
    tenant = await _tenant(request, authorization)
    svc = _svc(request)
    plan = request.app.state.models.plan(tenant.plan)
    data = [{"id": "auto", "object": "model", "created": 0, "owned_by": "conflux"}]
    data += [{"id": m.id, "object": "model", "created": 0, "owned_by": "conflux"} for m in svc.models_for(plan)]
    data.append({"id": EMBEDDING_MODEL, "object": "model", "created": 0, "owned_by": "conflux"})  # /v1/embeddings
    return {"object": "list", "data": data}


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           authorization: str | None = Header(default=None),
                           idempotency_key: str | None = Header(default=None),
                           x_conversation_id: str | None = Header(default=None),
                           cache_control: str | None = Header(default=None)) -> Any:
    tenant = await _tenant(request, authorization)
    svc = _svc(request)
    # Before the checks: `tool_choice: required` is valid for a tenant whose default tools the chat gets.
    body = with_tenant_tools(body, tenant.server_tools, lambda model: svc.can_guide(model, tenant.plan))
    refuse_unsupported(body)
    if idempotency_key:
        stored = await svc.idempotent_start(tenant.tenant_id, idempotency_key)
        if stored is not None:
            return JSONResponse(stored, headers={"x-request-id": stored["id"], "idempotent-replayed": "true"})
    try:
        adm = await svc.admit(tenant, body, x_conversation_id)
        lookup = svc.cache.lookup_for(tenant, body, adm.max_tokens, x_conversation_id, cache_control)
        cached = await svc.from_cache(tenant, body, adm, lookup)
        choices = cached.choices or await svc.submit(tenant, body, adm, lookup=lookup, probe=cached.probe)
    except BaseException:
        if idempotency_key:
            await svc.idempotent_finish(tenant.tenant_id, idempotency_key, None)
        raise
    created = int(time.time())
    headers = {"x-request-id": adm.request_id, "x-conversation-id": adm.conversation_id, **adm.headers(),
               "x-cache": cached.header,
               **({"x-cache-similarity": str(cached.similarity)} if cached.similarity is not None else {})}
    if not body.stream:
        try:
            completions = await svc.collect_all(choices, body.model)
        except BaseException as exc:
            if isinstance(exc, ApiError):  # an error answer names its request like any other answer
                exc.headers = {**exc.headers, **headers}
            await svc.cancel(choices)
            if idempotency_key:
                await svc.idempotent_finish(tenant.tenant_id, idempotency_key, None)
            raise
        result = _completion_body(adm.request_id, created, completions, bool(body.logprobs))
        if idempotency_key:
            await svc.idempotent_finish(tenant.tenant_id, idempotency_key, result)
        return JSONResponse(result, headers=headers)

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    async def events() -> AsyncIterator[str]:
        base = {"id": adm.request_id, "object": "chat.completion.chunk", "created": created, "model": body.model}
        finished = False
        prompt_tokens, completion_tokens = 0, 0
        served = body.model  # the model that answered (routing's choice for `auto`), as the chunks say

        def delta(i: int, model: str, d: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
            return sse({**base, "model": model, "choices": [{"index": i, "delta": d, "finish_reason": None,
                                                             **(extra or {})}]})

        try:
            for i in range(len(choices)):
                yield delta(i, body.model, {"role": "assistant", "content": ""})
            async for i, chunk in svc.merged(choices):
                model = served = chunk.get("model") or body.model
                if chunk.get("error"):
                    yield sse(chain_error(chunk).body())
                    finished = True
                    return
                if chunk.get("tool_step"):  # a server-side tool step: a comment line, which OpenAI clients skip
                    yield f": conflux.tool_step {chunk['tool_step']}\n\n"
                if chunk["text"]:
                    extra = {"logprobs": _logprobs(chunk.get("logprobs") or [])} if body.logprobs else {}
                    yield delta(i, model, {"content": chunk["text"]}, extra)
                for d in chunk.get("tool_calls") or []:
                    yield delta(i, model, {"tool_calls": [_tool_call_delta(d)]})
                if chunk["is_final"]:
                    yield sse({**base, "model": model, "citations": chunk.get("citations") or [],
                               "choices": [{"index": i, "delta": {},
                                            "finish_reason": chunk.get("finish_reason") or "stop"}]})
                    prompt_tokens = chunk.get("prompt_tokens") or prompt_tokens
                    completion_tokens += chunk.get("completion_tokens") or 0
            if include_usage:  # after every choice has ended; the prompt counted once
                yield sse({**base, "model": served, "choices": [], "usage": {
                    "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens}})
            finished = True
            yield "data: [DONE]\n\n"
        except ApiError as exc:
            finished = True
            yield sse(exc.body())
        finally:
            if not finished:  # the client went away (or the server is stopping): stop the generation
                await asyncio.shield(svc.cancel(choices))
            if idempotency_key:
                await svc.idempotent_finish(tenant.tenant_id, idempotency_key, None)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={**headers, "Cache-Control": "no-cache"})


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "the body must be JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", code="invalid_json")
    return body


@router.post("/v1/moderations", response_model=None)
async def moderations(request: Request, authorization: str | None = Header(default=None)) -> JSONResponse:
    tenant = await _tenant(request, authorization)
    body, headers = await request.app.state.moderation.moderate(tenant, await _json_object(request))
    return JSONResponse(body, headers=headers)


@router.post("/v1/embeddings", response_model=None)
async def embeddings(request: Request, authorization: str | None = Header(default=None)) -> JSONResponse:
    tenant = await _tenant(request, authorization)
    body, headers = await request.app.state.embeddings.create(tenant, await _json_object(request))
    return JSONResponse(body, headers=headers)


@router.post("/v1/responses", response_model=None)
async def create_response(request: Request, authorization: str | None = Header(default=None)) -> Any:
    tenant = await _tenant(request, authorization)
    result, headers = await request.app.state.responses.create(tenant, await _json_object(request))
    if isinstance(result, dict):
        return JSONResponse(result, headers={"x-request-id": result["id"], **headers})
    return StreamingResponse(result, media_type="text/event-stream", headers={"Cache-Control": "no-cache", **headers})


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, request: Request,
                       authorization: str | None = Header(default=None)) -> dict[str, Any]:
    tenant = await _tenant(request, authorization)
    result: dict[str, Any] = await request.app.state.responses.get(tenant, response_id)
    return result


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request,
                          authorization: str | None = Header(default=None)) -> dict[str, Any]:
    tenant = await _tenant(request, authorization)
    result: dict[str, Any] = await request.app.state.responses.delete(tenant, response_id)
    return result


@router.post("/v1/feedback")
async def feedback(body: FeedbackRequest, request: Request,
                   authorization: str | None = Header(default=None)) -> dict[str, Any]:
    tenant = await _tenant(request, authorization)
    svc = _svc(request)
    # Another tenant's response id looks exactly like an unknown one: nothing leaks about it.
    if not svc.owns(tenant.tenant_id, body.response_id):
        raise ApiError(404, f"response {body.response_id} not found", "not_found_error", code="not_found")
    kinds = [k for k, v in (("CORRECTION", body.corrected_answer), ("RATING", body.rating),
                            ("THUMBS", body.thumbs_up), ("COMMENT", body.comment)) if v is not None]
    if not kinds:
        raise ApiError(400, "give thumbs_up, rating, comment or corrected_answer", code="empty_feedback")
    envelope = new_envelope(tenant_id=tenant.tenant_id, conversation_id=body.response_id,
                            request_id=body.response_id, producer=svc.instance_id)
    record = {
        "envelope": envelope,
        "response_id": body.response_id, "kind": kinds[0], "thumbs_up": body.thumbs_up, "rating": body.rating,
        "comment": body.comment, "corrected_answer": body.corrected_answer,
    }
    where = await request.app.state.publisher.publish("chat.feedback", record, key=body.response_id)
    return {"id": envelope["event_id"], "object": "feedback", "response_id": body.response_id,
            "topic": where.topic, "partition": where.partition, "offset": where.offset}


@router.post("/v1/events/{topic}")
async def publish_event(topic: str, request: Request, authorization: str | None = Header(default=None)) -> Any:
    tenant = await _tenant(request, authorization)
    if topic not in BRIDGE_TOPICS:
        raise ApiError(404, f"topic {topic!r} does not accept events over HTTP; allowed: {sorted(BRIDGE_TOPICS)}",
                       "not_found_error", code="unknown_topic")
    try:
        body = await request.json()
    except ValueError:
        raise ApiError(400, "request body is not valid JSON", code="invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the event must be a JSON object", code="invalid_value")
    if topic == "chat.feedback" and not _svc(request).owns(tenant.tenant_id, str(body.get("response_id"))):
        # The same rule as /v1/feedback: another tenant's response id looks exactly like an unknown one.
        raise ApiError(404, f"response {body.get('response_id')} not found", "not_found_error", code="not_found")
    catalogue = request.app.state.catalogue
    spec = catalogue.get(topic)
    # The envelope is the edge's: tenant comes from the API key, never from the body.
    key_value = str(body.get(spec.key) or "")
    envelope = new_envelope(tenant_id=tenant.tenant_id, conversation_id=str(body.get("conversation_id", key_value)),
                            request_id=str(body.get("request_id", key_value)), producer=_svc(request).instance_id)
    record = {k: v for k, v in body.items() if k not in ("envelope", "conversation_id", "request_id")}
    record["envelope"] = envelope
    try:
        where = await request.app.state.publisher.publish(topic, record, key=key_value or None)
    except EncodeError as exc:
        raise ApiError(422, str(exc), code="schema_mismatch") from None
    return JSONResponse({"topic": where.topic, "partition": where.partition, "offset": where.offset,
                         "event_id": envelope["event_id"]}, status_code=200)
