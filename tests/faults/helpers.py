"""What fault tests do as clients, and how they read the platform's own record of what happened."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx

from conflux.clickhouse import clickhouse_client
from conflux.config import Settings


@dataclass
class Outcome:
    request_id: str | None  # None when the request was never accepted (no response headers)
    status: int  # HTTP status; 0 when the connection failed before one arrived
    kind: str  # "ok" (a whole answer), "error" (an explicit error in the stream or body), "transport"
    text: str
    detail: str
    seconds: float


async def stream_chat(http: httpx.AsyncClient, base: str, key: str, content: str, *, model: str = "echo-paced",
                      max_tokens: int = 40) -> Outcome:
    """One streamed chat, classified. A stream that stops without [DONE] or an error event is `transport`."""
    body = {"model": model, "stream": True, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": content}]}
    t0 = time.monotonic()
    rid: str | None = None
    status = 0
    parts: list[str] = []
    try:
        async with http.stream("POST", f"{base}/chat/completions", json=body,
                               headers={"Authorization": f"Bearer {key}"}) as resp:
            status = resp.status_code
            rid = resp.headers.get("x-request-id")
            if status != 200:
                return Outcome(rid, status, "error", "", (await resp.aread()).decode(), time.monotonic() - t0)
            async for line in resp.aiter_lines():
                if line == "data: [DONE]":
                    return Outcome(rid, status, "ok", "".join(parts), "", time.monotonic() - t0)
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return Outcome(rid, status, "error", "".join(parts), chunk["error"]["message"],
                                   time.monotonic() - t0)
                for choice in chunk["choices"]:
                    parts.append(choice["delta"].get("content") or "")
            return Outcome(rid, status, "transport", "".join(parts), "stream ended without [DONE]",
                           time.monotonic() - t0)
    except httpx.HTTPError as exc:
        return Outcome(rid, status, "transport", "".join(parts), repr(exc), time.monotonic() - t0)


def expected_echo(content: str, max_tokens: int) -> str:
    return " ".join((content.split() * max_tokens)[:max_tokens])


def responses_by_request(settings: Settings, request_ids: list[str], *, wait_s: float = 60) -> dict[str, list[Any]]:
    """`chat.responses` rows in ClickHouse per request id (event ids deduplicated), once every id has one or
    after wait_s. Each value is a list of (finish_reason, error) of that request's responses."""
    client = clickhouse_client(settings)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            rows = client.query(
                "SELECT request_id, JSONExtractString(body, 'finish_reason'), JSONExtractString(body, 'error') "
                "FROM events FINAL WHERE topic = 'chat.responses' AND request_id IN {ids:Array(String)}",
                parameters={"ids": request_ids}).result_rows
            found: dict[str, list[Any]] = {}
            for rid, finish, error in rows:
                found.setdefault(rid, []).append((finish, error))
            if len(found) == len(set(request_ids)) or time.monotonic() > deadline:
                return found
            time.sleep(1)
    finally:
        client.close()


def event_ids_present(settings: Settings, event_ids: list[str], *, wait_s: float = 60) -> set[str]:
    client = clickhouse_client(settings)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            rows = client.query("SELECT DISTINCT event_id FROM events WHERE event_id IN {ids:Array(String)}",
                                parameters={"ids": event_ids}).result_rows
            present = {r[0] for r in rows}
            if present >= set(event_ids) or time.monotonic() > deadline:
                return present
            time.sleep(1)
    finally:
        client.close()
