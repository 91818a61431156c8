"""Wire schemas of the OpenAI-compatible API (only what Conflux reads; unknown fields are ignored)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ChatMessageIn(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model: str = Field(min_length=1, max_length=128)
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32768)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    user: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = None

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class FeedbackRequest(BaseModel):
    response_id: str = Field(min_length=1, max_length=128)
    thumbs_up: bool | None = None
    rating: int | None = Field(default=None, ge=1, le=5)
    comment: str | None = Field(default=None, max_length=10_000)
    corrected_answer: str | None = Field(default=None, max_length=100_000)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorBody(BaseModel):
    """Every error the edge answers, in OpenAI's format."""

    error: ErrorDetail


# Documented on every route (FastAPI's default 422 schema is replaced: validation errors are 400s here).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": why} for status, why in (
        (400, "malformed request: bad JSON, a missing or invalid field"),
        (401, "missing, unknown or revoked API key"),
        (403, "the tenant's plan does not allow this"),
        (404, "unknown model, topic or id (another tenant's ids look unknown too)"),
        (409, "a request with this Idempotency-Key is still running"),
        (413, "request body over 1 MiB"),
        (422, "event does not match its topic's schema (HTTP bridge)"),
        (429, "rate limit: requests or tokens per minute (Retry-After says when to retry)"),
        (502, "the chain or the model server failed for this request"),
        (503, "the event broker or the key/limit store is unavailable (Retry-After)"),
        (504, "no answer within the configured timeout"),
    )
}
