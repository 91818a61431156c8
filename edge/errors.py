"""Errors in OpenAI's format: {"error": {"message", "type", "param", "code"}}, never a stack trace."""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException

from conflux.errors import PublishError

log = logging.getLogger("conflux.edge")
RETRY_AFTER_S = 5  # what a client is told to wait while the broker or Redis is unavailable


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return ApiError(400, "request body is not valid JSON", code="invalid_json").response()
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        if first.get("type") == "extra_forbidden":  # OpenAI's own answer to a field it does not have
            return ApiError(400, f"Unrecognized request argument supplied: {loc}", param=loc,
                            code="unknown_parameter").response()
        return ApiError(400, f"{loc or 'body'}: {first.get('msg', 'invalid')}", param=loc or None,
                        code="invalid_value").response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return ApiError(exc.status_code, str(exc.detail), type_, code=str(exc.status_code)).response()

    # A dependency down is the service being unavailable, not the client's fault nor an internal error: 503
    # with Retry-After, so clients and load balancers back off and retry. Both fail closed: without Redis the
    # edge cannot check keys or meter limits, and without the broker it cannot hand the request on.
    @app.exception_handler(PublishError)
    async def broker_down(request: Request, exc: PublishError) -> JSONResponse:
        log.warning("broker unavailable on %s: %s", request.url.path, exc)
        return unavailable("the event broker").response()

    @app.exception_handler(RedisError)
    async def redis_down(request: Request, exc: RedisError) -> JSONResponse:
        log.warning("redis unavailable on %s: %r", request.url.path, exc)
        return unavailable("the key and limit store").response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return ApiError(500, "internal error; the request id in x-request-id identifies it in the logs",
                        "server_error", code="internal_error").response()


def unavailable(what: str) -> ApiError:
    return ApiError(503, f"{what} is unavailable; retry after {RETRY_AFTER_S}s", "server_error",
                    code="service_unavailable", headers={"Retry-After": str(RETRY_AFTER_S)})


def sse(data: object) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"
