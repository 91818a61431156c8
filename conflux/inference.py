"""Generation and embeddings over Triton's gRPC API.

Every generating model takes the input/output names of TensorRT-LLM's `ensemble` model (text_input,
max_tokens, temperature -> text_output), so the same client serves llama.cpp here and TensorRT-LLM on GPUs.
A stream ends with Triton's empty final response. Long-lived processes keep one TritonClient (one gRPC
channel); opening a channel per call cost more CPU than the echo model itself.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np

from conflux.errors import ConfluxError
from model_runtime.llama import Sampling


class InferenceError(ConfluxError):
    """Triton refused, failed or timed out on a generation."""


@dataclass(frozen=True)
class Piece:
    text: str
    elapsed_ms: float  # since the request was sent
    logprobs: list[dict[str, Any]] | None = None  # OpenAI logprobs.content entries of its tokens, when asked


def _inputs(grpcclient: Any, prompt: str, max_tokens: int, temperature: float, stream: bool,
            sampling: Sampling | None = None, guide: tuple[str, str] | None = None,
            top_logprobs: int | None = None) -> list[Any]:
    """The ensemble's request: a batch of one, and `stream` (TensorRT-LLM streams only when asked). Sampling
    knobs left unset are not sent, so the model's defaults (OpenAI's) apply. top_logprobs None asks for no
    logprobs."""

    def tensor(name: str, kind: str, value: Any, dtype: Any) -> Any:
        t = grpcclient.InferInput(name, [1, 1], kind)
        t.set_data_from_numpy(np.array([[value]], dtype=dtype))
        return t

    inputs = [tensor("text_input", "BYTES", prompt.encode(), np.object_),
              tensor("max_tokens", "INT32", max_tokens, np.int32),
              tensor("temperature", "FP32", temperature, np.float32),
              tensor("stream", "BOOL", stream, np.bool_)]
    s = sampling or Sampling()
    for name, value in (("top_p", s.top_p), ("presence_penalty", s.presence_penalty),
                        ("frequency_penalty", s.frequency_penalty)):
        if value is not None:
            inputs.append(tensor(name, "FP32", value, np.float32))
    if s.seed is not None:
        inputs.append(tensor("random_seed", "UINT64", s.seed % 2**64, np.uint64))
    if guide is not None:  # TensorRT-LLM's names for constrained decoding: (json_schema | gbnf, the guide)
        inputs.append(tensor("guided_decoding_guide_type", "BYTES", guide[0].encode(), np.object_))
        inputs.append(tensor("guided_decoding_guide", "BYTES", guide[1].encode(), np.object_))
    if top_logprobs is not None:
        inputs.append(tensor("return_log_probs", "BOOL", True, np.bool_))
        inputs.append(tensor("top_logprobs", "INT32", top_logprobs, np.int32))
    return inputs


def _logprobs(result: Any) -> list[dict[str, Any]] | None:
    raw = _text(result, "logprobs")
    if not raw:
        return None
    entries: list[dict[str, Any]] = json.loads(raw)
    return entries


def _text(result: Any, name: str = "text_output") -> str:
    out = result.as_numpy(name)
    if out is None or not len(out):
        return ""
    raw = out.reshape(-1)[0]
    return raw.decode() if isinstance(raw, bytes) else str(raw)


DRAIN_S = 1.0
EMBED_MAX_BATCH = 64  # triton_models/minilm_embed/config.pbtxt max_batch_size


async def _drain(responses: Any) -> None:
    """After the final response, reads the stream to its end so that it closes normally. Left open, the gRPC
    call is cancelled when it is collected; a cancelled stream is our suspect (not proven) for Triton's python
    backend sometimes never unloading a model on SIGTERM."""
    try:
        async with asyncio.timeout(DRAIN_S):
            async for _ in responses:
                pass
    except (TimeoutError, grpc.RpcError):
        responses.cancel()


def _rpc_detail(exc: grpc.RpcError) -> str:
    details = getattr(exc, "details", None)
    return str(details() if callable(details) else exc)


class TritonClient:
    """One gRPC channel to Triton, shared by every call of a process (asyncio, not thread-safe)."""

    def __init__(self, url: str) -> None:
        import tritonclient.grpc.aio as grpcclient

        self._g = grpcclient
        # After an outage gRPC backs off reconnecting for up to 2 minutes by default; a restarted Triton
        # should be used again within a second.
        self._client = grpcclient.InferenceServerClient(url, channel_args=[
            ("grpc.initial_reconnect_backoff_ms", 200), ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000)])

    async def close(self) -> None:
        await self._client.close()

    async def repository_index(self) -> dict[str, Any]:
        """Triton's models and their states; raises InferenceError (Triton down is the model server being
        unavailable, for the routing stage that asks it as for every other caller)."""
        from tritonclient.utils import InferenceServerException

        try:
            index: dict[str, Any] = await self._client.get_model_repository_index(as_json=True)
        except InferenceServerException as exc:
            raise InferenceError(f"model repository: {exc.message() or exc}") from exc
        return index

    async def generate(self, model: str, prompt: str, max_tokens: int, temperature: float = 0.0,
                       timeout_s: float = 60.0, sampling: Sampling | None = None) -> str:
        """Non-streaming generation (a model that is not decoupled)."""
        from tritonclient.utils import InferenceServerException

        try:
            result = await self._client.infer(model, _inputs(self._g, prompt, max_tokens, temperature, False, sampling),
                                              client_timeout=timeout_s)
            return _text(result)
        except InferenceServerException as exc:
            raise InferenceError(f"{model}: {exc.message() or exc}") from exc

    async def stream(self, model: str, prompt: str, max_tokens: int, temperature: float = 0.0,
                     timeout_s: float = 30.0, sampling: Sampling | None = None,
                     guide: tuple[str, str] | None = None,
                     top_logprobs: int | None = None) -> AsyncGenerator[Piece]:
        """Pieces as Triton produces them; raises InferenceError, never hangs past timeout_s."""
        from tritonclient.utils import InferenceServerException

        inputs = _inputs(self._g, prompt, max_tokens, temperature, True, sampling, guide, top_logprobs)

        async def requests() -> AsyncIterator[dict[str, object]]:
            # The aio client has no keyword for it: the empty final response is asked for as a parameter.
            yield {"model_name": model, "inputs": inputs, "request_id": str(uuid.uuid4()),
                   "parameters": {"triton_enable_empty_final_response": True}}

        t0 = time.perf_counter()
        try:
            responses = self._client.stream_infer(requests(), stream_timeout=timeout_s)
            async for result, error in responses:
                if error is not None:
                    raise InferenceError(f"{model}: {error}")
                final = result.get_response().parameters.get("triton_final_response")
                text = _text(result)
                if text:
                    yield Piece(text, (time.perf_counter() - t0) * 1000,
                                _logprobs(result) if top_logprobs is not None else None)
                if final is not None and final.bool_param:
                    await _drain(responses)
                    return
            raise InferenceError(f"{model}: stream ended without a final response")
        except InferenceServerException as exc:
            raise InferenceError(f"{model}: {exc.message() or exc}") from exc
        except grpc.RpcError as exc:  # the stream itself broke (server gone mid-answer, deadline): not a bug here
            raise InferenceError(f"{model}: {_rpc_detail(exc)}") from exc

    async def embed(self, texts: list[str], model: str = "minilm_embed", timeout_s: float = 30.0) -> Any:
        """Unit-length embeddings (len(texts), dim); batched further by Triton. More texts than the model's
        max_batch_size go as several requests."""
        from tritonclient.utils import InferenceServerException

        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        if len(texts) > EMBED_MAX_BATCH:
            parts = [await self.embed(texts[i:i + EMBED_MAX_BATCH], model, timeout_s)
                     for i in range(0, len(texts), EMBED_MAX_BATCH)]
            return np.concatenate(parts)
        inp = self._g.InferInput("TEXT", [len(texts), 1], "BYTES")
        inp.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
        try:
            result = await self._client.infer(model, [inp], client_timeout=timeout_s)
            return result.as_numpy("EMBEDDING")
        except InferenceServerException as exc:
            raise InferenceError(f"{model}: {exc.message() or exc}") from exc


# One-off calls (CLI, tests, benchmarks): a client for the call, closed after it.

async def generate(url: str, model: str, prompt: str, max_tokens: int, temperature: float = 0.0,
                   timeout_s: float = 60.0) -> str:
    client = TritonClient(url)
    try:
        return await client.generate(model, prompt, max_tokens, temperature, timeout_s)
    finally:
        await client.close()


async def stream_generate(url: str, model: str, prompt: str, max_tokens: int, temperature: float = 0.0,
                          timeout_s: float = 30.0) -> AsyncIterator[Piece]:
    client = TritonClient(url)
    try:
        async for piece in client.stream(model, prompt, max_tokens, temperature, timeout_s):
            yield piece
    finally:
        await client.close()


async def embed(url: str, texts: list[str], model: str = "minilm_embed", timeout_s: float = 30.0) -> Any:
    client = TritonClient(url)
    try:
        return await client.embed(texts, model, timeout_s)
    finally:
        await client.close()
