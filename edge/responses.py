"""/v1/responses: OpenAI's Responses API on the same chain as chat completions.

A Responses request is translated into a chat request (instructions and input items into messages, function
tools, `text.format` into `response_format`) and then admitted, published and streamed by ChatService exactly
like one: the same checks, limits, events and refusals. Its answer is assembled into Responses output items
(a message, function calls) and, streamed, into Responses events.

Stored responses (`store`, true by default as in OpenAI's API) are kept in Redis per tenant for STORE_TTL_S,
with the conversation that led to them, so that `previous_response_id` continues it; GET and DELETE see the
tenant's own only (the id is signed for its tenant, so another tenant's id is a plain 404).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from conflux.tenants import Tenant
from edge.chat import ChatService, Choices, Completion, ToolCalls
from edge.errors import ApiError
from edge.params import refuse_unsupported
from edge.protocol import ChatCompletionRequest

STORE_TTL_S = 30 * 24 * 3600  # as long as OpenAI keeps a stored response
MAX_STORED_BYTES = 2 * 1024 * 1024
# Fields taken as they are, or with values that ask for nothing the platform lacks; others are refused by name.
FIELDS = {"model", "input", "instructions", "stream", "store", "previous_response_id", "tools", "tool_choice",
          "parallel_tool_calls", "temperature", "top_p", "max_output_tokens", "metadata", "user",
          "safety_identifier", "text", "truncation", "include", "reasoning", "background", "service_tier",
          "stream_options"}
NOTHING_SPECIAL: dict[str, tuple[Any, ...]] = {
    "truncation": (None, "auto"), "include": (None, []), "reasoning": (None, {}), "background": (None, False),
    "service_tier": (None, "auto", "default"), "stream_options": (None, {})}


def response_id(request_id: str) -> str:
    return "resp_" + request_id.removeprefix("chatcmpl-")


def request_id_of(resp_id: str) -> str:
    return "chatcmpl-" + resp_id.removeprefix("resp_")


def _bad(param: str, message: str, code: str = "invalid_value") -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code=code)


def _text_of(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, p in enumerate(content):
            if not isinstance(p, dict) or p.get("type") not in ("input_text", "output_text", "text"):
                raise _bad(f"{where}[{j}]", "only text content is read (input_text, output_text)",
                           "unsupported_parameter")
            parts.append(str(p.get("text", "")))
        return "".join(parts)
    raise _bad(where, "a string or a list of content parts")


def input_messages(raw: Any) -> list[dict[str, Any]]:
    """Responses input (a string or a list of items) as chat messages."""
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise _bad("input", "a string or a non-empty list of items")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise _bad(f"input[{i}]", "an item is an object")
        kind = item.get("type", "message")
        if kind == "message":
            if item.get("role") not in ("user", "system", "developer", "assistant"):
                raise _bad(f"input[{i}].role", "user, system, developer or assistant")
            out.append({"role": item["role"], "content": _text_of(item.get("content"), f"input[{i}].content")})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function",
                    "function": {"name": item.get("name"), "arguments": item.get("arguments")}}
            if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls"):
                out[-1]["tool_calls"].append(call)  # calls of one answer share one assistant turn
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            out.append({"role": "tool", "tool_call_id": item.get("call_id"),
                        "content": output if isinstance(output, str) else json.dumps(output)})
        else:
            raise _bad(f"input[{i}].type", f"{kind!r} items are not supported (message, function_call, "
                       "function_call_output)", "unsupported_parameter")
    return out


def chat_tools(raw: Any) -> list[dict[str, Any]] | None:
    if raw is None:
        return None
    if not isinstance(raw, list):
        raise _bad("tools", "a list")
    out = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict) or t.get("type") != "function":
            raise _bad(f"tools[{i}].type", "only function tools are available (no hosted tools)",
                       "unsupported_parameter")
        out.append({"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters", "strict")
                                                     if k in t}})
    return out


def chat_tool_choice(raw: Any) -> Any:
    if raw is None or isinstance(raw, str):
        return raw
    if isinstance(raw, dict) and raw.get("type") == "function":
        return {"type": "function", "function": {"name": raw.get("name")}}
    raise _bad("tool_choice", "none, auto, required or {\"type\": \"function\", \"name\": ...}")


def chat_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    fmt = text.get("format") if isinstance(text, dict) else None
    unknown = sorted(set(text) - {"format"}) if isinstance(text, dict) else []
    if unknown:
        raise _bad(f"text.{unknown[0]}", "not supported", "unsupported_parameter")
    if fmt is None or fmt.get("type") in ("text", "json_object"):
        return None if fmt is None else {"type": fmt["type"]}
    if fmt.get("type") == "json_schema":
        return {"type": "json_schema", "json_schema": {k: fmt[k] for k in ("name", "description", "schema", "strict")
                                                       if k in fmt}}
    raise _bad("text.format.type", "text, json_object or json_schema")


class ResponsesService:
    def __init__(self, chat: ChatService, redis: Any) -> None:
        self._chat = chat
        self._r = redis

    def _key(self, tenant_id: str, resp_id: str) -> str:
        return f"conflux:resp:{tenant_id}:{resp_id}"

    async def _stored(self, tenant: Tenant, resp_id: str, param: str | None = None) -> dict[str, Any]:
        raw = None
        if self._chat.owns(tenant.tenant_id, request_id_of(resp_id)):
            raw = await self._r.get(self._key(tenant.tenant_id, resp_id))
        if raw is None:
            raise ApiError(404, f"response {resp_id} not found", "not_found_error", param=param, code="not_found")
        stored: dict[str, Any] = json.loads(raw)
        return stored

    async def get(self, tenant: Tenant, resp_id: str) -> dict[str, Any]:
        return dict((await self._stored(tenant, resp_id))["response"])

    async def delete(self, tenant: Tenant, resp_id: str) -> dict[str, Any]:
        await self._stored(tenant, resp_id)
        await self._r.delete(self._key(tenant.tenant_id, resp_id))
        return {"id": resp_id, "object": "response", "deleted": True}

    async def translate(self, tenant: Tenant, body: dict[str, Any]
                        ) -> tuple[ChatCompletionRequest, list[dict[str, Any]]]:
        """The chat request this Responses request is, and the conversation to store with its answer."""
        unknown = sorted(set(body) - FIELDS)
        if unknown:
            raise ApiError(400, f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0],
                           code="unknown_parameter")
        for name, allowed in NOTHING_SPECIAL.items():
            if body.get(name) not in allowed:
                raise _bad(name, f"only {', '.join(map(json.dumps, allowed[1:]))} is supported",
                           "unsupported_parameter")
        history: list[dict[str, Any]] = []
        if prev := body.get("previous_response_id"):
            history = list((await self._stored(tenant, str(prev), "previous_response_id"))["messages"])
        conversation = history + input_messages(body.get("input"))
        instructions = body.get("instructions")
        system = [{"role": "system", "content": instructions}] if instructions else []  # not carried over
        fields = {"model": body.get("model"), "messages": system + conversation, "stream": bool(body.get("stream")),
                  "temperature": body.get("temperature"), "top_p": body.get("top_p"),
                  "max_completion_tokens": body.get("max_output_tokens"), "metadata": body.get("metadata"),
                  "user": body.get("user"), "safety_identifier": body.get("safety_identifier"),
                  "tools": chat_tools(body.get("tools")), "tool_choice": chat_tool_choice(body.get("tool_choice")),
                  "parallel_tool_calls": body.get("parallel_tool_calls"),
                  "response_format": chat_format(body.get("text"))}
        try:
            req = ChatCompletionRequest(**{k: v for k, v in fields.items() if v is not None})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            raise _bad(where or "body", first.get("msg", "invalid")) from None
        refuse_unsupported(req)
        return req, conversation

    async def create(self, tenant: Tenant, body: dict[str, Any]
                     ) -> tuple[dict[str, Any] | AsyncIterator[str], dict[str, str]]:
        """The Response (or its event stream) and the answer's headers (the plan's x-ratelimit-*)."""
        req, conversation = await self.translate(tenant, body)
        adm = await self._chat.admit(tenant, req, None)
        choices = await self._chat.submit(tenant, req, adm)  # one: the Responses API has no n
        resp = Skeleton(response_id(adm.request_id), body, req)
        store = body.get("store") is not False
        if not req.stream:
            try:
                completion = await self._chat.collect(adm.request_id, choices.queues[0], req.model)
            except BaseException:
                await self._chat.cancel(choices)
                raise
            result = resp.completed(completion)
            if store:
                await self._store(tenant, result, conversation)
            return result, adm.headers()
        return self._events(tenant, choices, req, resp, conversation, store), adm.headers()

    async def _store(self, tenant: Tenant, response: dict[str, Any], conversation: list[dict[str, Any]]) -> None:
        text = "".join(p["text"] for item in response["output"] if item["type"] == "message" for p in item["content"])
        calls = [{"id": i["call_id"], "type": "function", "function": {"name": i["name"], "arguments": i["arguments"]}}
                 for i in response["output"] if i["type"] == "function_call"]
        answer: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            answer["tool_calls"] = calls
        record = json.dumps({"response": response, "messages": [*conversation, answer]})
        if len(record) <= MAX_STORED_BYTES:  # a larger one is answered but not kept (said in the README)
            await self._r.set(self._key(tenant.tenant_id, response["id"]), record, ex=STORE_TTL_S)

    async def _events(self, tenant: Tenant, choices: Choices, req: ChatCompletionRequest,
                      resp: Skeleton, conversation: list[dict[str, Any]], store: bool) -> AsyncIterator[str]:
        seq = 0

        def event(kind: str, **fields: Any) -> str:
            nonlocal seq
            seq += 1
            return f"event: {kind}\ndata: {json.dumps({'type': kind, 'sequence_number': seq - 1, **fields})}\n\n"

        yield event("response.created", response=resp.state("in_progress"))
        yield event("response.in_progress", response=resp.state("in_progress"))
        text: list[str] = []
        calls = ToolCalls()
        msg_id = resp.item_id("msg")
        finished = False
        try:
            async for chunk in self._chat.chunks(choices.ids[0], choices.queues[0]):
                if chunk.get("error"):
                    yield event("response.failed", response=resp.failed(chunk["error"]))
                    finished = True
                    return
                if chunk["text"]:
                    if not text:
                        yield event("response.output_item.added", output_index=0,
                                    item=resp.message(msg_id, "", "in_progress"))
                        yield event("response.content_part.added", item_id=msg_id, output_index=0, content_index=0,
                                    part={"type": "output_text", "text": "", "annotations": []})
                    text.append(chunk["text"])
                    yield event("response.output_text.delta", item_id=msg_id, output_index=0, content_index=0,
                                delta=chunk["text"], logprobs=[])
                for d in chunk.get("tool_calls") or []:
                    index = d["index"] + (1 if text else 0)
                    if d.get("id"):
                        item = resp.call(d["id"], d["name"], "", "in_progress")
                        yield event("response.output_item.added", output_index=index, item=item)
                    yield event("response.function_call_arguments.delta", item_id=resp.item_id("fc", d["index"]),
                                output_index=index, delta=d.get("arguments") or "")
                calls.add(chunk.get("tool_calls") or [])
                if chunk["is_final"]:
                    full = "".join(text)
                    if text:
                        yield event("response.output_text.done", item_id=msg_id, output_index=0, content_index=0,
                                    text=full, logprobs=[])
                        yield event("response.content_part.done", item_id=msg_id, output_index=0, content_index=0,
                                    part={"type": "output_text", "text": full, "annotations": []})
                        yield event("response.output_item.done", output_index=0,
                                    item=resp.message(msg_id, full, "completed"))
                    for i, c in enumerate(calls.calls()):
                        index = i + (1 if text else 0)
                        name, arguments = c["function"]["name"], c["function"]["arguments"]
                        yield event("response.function_call_arguments.done", item_id=resp.item_id("fc", i),
                                    output_index=index, arguments=arguments)
                        yield event("response.output_item.done", output_index=index,
                                    item=resp.call(c["id"], name, arguments, "completed", i))
                    completion = Completion(full, chunk.get("model") or req.model, chunk.get("finish_reason") or "stop",
                                            chunk.get("prompt_tokens") or 0, chunk.get("completion_tokens") or 0,
                                            list(chunk.get("citations") or []), calls.calls(), [])
                    result = resp.completed(completion)
                    if store:
                        await self._store(tenant, result, conversation)
                    yield event("response.completed" if result["status"] == "completed" else "response.incomplete",
                                response=result)
                    finished = True
                    return
        except ApiError as exc:
            finished = True
            yield event("response.failed", response=resp.failed(exc.message))
        finally:
            if not finished:
                await self._chat.cancel(choices)


class Skeleton:
    """The Response object of one request, at each stage of its life."""

    def __init__(self, resp_id: str, body: dict[str, Any], req: ChatCompletionRequest) -> None:
        self.id = resp_id
        self._base = {
            "id": resp_id, "object": "response", "created_at": int(time.time()), "model": req.model,
            "instructions": body.get("instructions"), "metadata": body.get("metadata") or {},
            "parallel_tool_calls": req.parallel_tool_calls is not False,
            "previous_response_id": body.get("previous_response_id"), "temperature": req.temperature,
            "top_p": req.top_p, "max_output_tokens": req.max_completion_tokens,
            "tool_choice": body.get("tool_choice") or "auto", "tools": body.get("tools") or [],
            "text": body.get("text") or {"format": {"type": "text"}}, "truncation": "auto",
            "store": body.get("store") is not False, "user": req.user, "error": None, "incomplete_details": None,
            "output": [], "usage": None}

    def item_id(self, kind: str, index: int = 0) -> str:
        return f"{kind}_{self.id.removeprefix('resp_')}_{index}"

    def state(self, status: str) -> dict[str, Any]:
        return {**self._base, "status": status}

    def message(self, item_id: str, text: str, status: str) -> dict[str, Any]:
        content = [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else []
        return {"type": "message", "id": item_id, "role": "assistant", "status": status, "content": content}

    def call(self, call_id: str, name: str, arguments: str, status: str, index: int = 0) -> dict[str, Any]:
        return {"type": "function_call", "id": self.item_id("fc", index), "call_id": call_id, "name": name,
                "arguments": arguments, "status": status}

    def failed(self, message: str) -> dict[str, Any]:
        return {**self._base, "status": "failed", "error": {"code": "server_error", "message": message}}

    def completed(self, c: Completion) -> dict[str, Any]:
        output: list[dict[str, Any]] = []
        if c.text:
            output.append(self.message(self.item_id("msg"), c.text, "completed"))
        output += [self.call(t["id"], t["function"]["name"], t["function"]["arguments"], "completed", i)
                   for i, t in enumerate(c.tool_calls)]
        incomplete = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(c.finish_reason)
        return {**self._base, "model": c.model, "status": "incomplete" if incomplete else "completed",
                "incomplete_details": {"reason": incomplete} if incomplete else None, "output": output,
                "usage": {"input_tokens": c.prompt_tokens, "output_tokens": c.completion_tokens,
                          "total_tokens": c.prompt_tokens + c.completion_tokens,
                          "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}}}
