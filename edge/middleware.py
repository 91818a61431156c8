"""The edge's one middleware, as plain ASGI: bodies over the limit refused from the header alone (before
the body is read or any work is done), and responses counted by status for /metrics.

Plain ASGI rather than Starlette's BaseHTTPMiddleware: that one runs every request's app in a task of its
own and relays a streamed response through a memory stream, which cost about a quarter of the edge's CPU per
chat (py-spy under `make bench`)."""

from __future__ import annotations

from typing import Any

from edge.errors import ApiError

Scope = dict[str, Any]
Message = dict[str, Any]


class BodyLimitAndCounts:
    def __init__(self, app: Any, max_body_bytes: int, counts: dict[str, int]) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.counts = counts

    def _count(self, status: int) -> None:
        self.counts[str(status)] = self.counts.get(str(status), 0) + 1

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            self._count(413)
            response = ApiError(413, f"request body of {length.decode()} bytes exceeds {self.max_body_bytes}",
                                code="request_too_large").response()
            await response(scope, receive, send)
            return

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._count(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, counted)
        except Exception:
            self._count(500)  # answered by Starlette's outermost error handler
            raise
