"""Wire schemas of the OpenAI-compatible API. A chat request declares every field of OpenAI's reference (what
each one does here is in edge/params.py); a field OpenAI does not have is refused, as OpenAI refuses it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    # What an SDK echoes back from an earlier answer; refused when set (edge/params.py) until tools land.
    refusal: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    function_call: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: keep the text ones
            return "".join(str(p.get("text", "")) for p in self.content if p.get("type") == "text")
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False
    include_obfuscation: bool | None = None


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=128)
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=256)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=32768)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=32768)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stop: str | list[str] | None = None
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    # Declared so that a request using them gets a precise answer (edge/params.py): taken when they ask for
    # nothing beyond what the platform does, refused with a 400 naming them otherwise.
    n: int | None = Field(default=None, ge=1, le=128)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    store: bool | None = None
    service_tier: str | None = None
    modalities: list[str] | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # Conflux's extension: built-in tools the worker runs itself (streams/server_tools); see README.
    server_tools: list[str] | None = None
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    logit_bias: dict[str, float] | None = None
    prediction: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    web_search_options: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: str | None = None

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def stop_sequences(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


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
