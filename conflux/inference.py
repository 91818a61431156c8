"""Streaming generation over Triton's gRPC API (decoupled models: one response per piece).

Every generating model takes the input/output names of TensorRT-LLM's `ensemble` model (text_input,
max_tokens, temperature -> text_output), so the same client serves llama.cpp here and TensorRT-LLM on GPUs.
A stream ends with Triton's empty final response.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from conflux.errors import ConfluxError


class InferenceError(ConfluxError):
    """Triton refused, failed or timed out on a generation."""


@dataclass(frozen=True)
class Piece:
    text: str
    elapsed_ms: float  # since the request was sent


def _inputs(grpcclient: Any, prompt: str, max_tokens: int, temperature: float) -> list[Any]:
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    limit = grpcclient.InferInput("max_tokens", [1], "INT32")
    limit.set_data_from_numpy(np.array([max_tokens], dtype=np.int32))
    temp = grpcclient.InferInput("temperature", [1], "FP32")
    temp.set_data_from_numpy(np.array([temperature], dtype=np.float32))
    return [text, limit, temp]


def _text(result: Any) -> str:
    out = result.as_numpy("text_output")
    if out is None or not len(out):
        return ""
    raw = out.reshape(-1)[0]
    return raw.decode() if isinstance(raw, bytes) else str(raw)


async def generate(url: str, model: str, prompt: str, max_tokens: int, temperature: float = 0.0,
                   timeout_s: float = 60.0) -> str:
    """Non-streaming generation (a model that is not decoupled)."""
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    try:
        result = await client.infer(model, _inputs(grpcclient, prompt, max_tokens, temperature),
                                    client_timeout=timeout_s)
        return _text(result)
    except InferenceServerException as exc:
        raise InferenceError(f"{model}: {exc.message() or exc}") from exc
    finally:
        await client.close()


async def stream_generate(url: str, model: str, prompt: str, max_tokens: int, temperature: float = 0.0,
                          timeout_s: float = 30.0) -> AsyncIterator[Piece]:
    """Yields pieces as Triton produces them; raises InferenceError, never hangs past timeout_s."""
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    inputs = _inputs(grpcclient, prompt, max_tokens, temperature)

    async def requests() -> AsyncIterator[dict[str, object]]:
        # The aio client has no keyword for it: the empty final response is asked for as a parameter.
        yield {"model_name": model, "inputs": inputs, "request_id": str(uuid.uuid4()),
               "parameters": {"triton_enable_empty_final_response": True}}

    t0 = time.perf_counter()
    try:
        async for result, error in client.stream_infer(requests(), stream_timeout=timeout_s):
            if error is not None:
                raise InferenceError(f"{model}: {error}")
            response = result.get_response()
            final = response.parameters.get("triton_final_response")
            text = _text(result)
            if text:
                yield Piece(text, (time.perf_counter() - t0) * 1000)
            if final is not None and final.bool_param:
                return
        raise InferenceError(f"{model}: stream ended without a final response")
    except InferenceServerException as exc:
        raise InferenceError(f"{model}: {exc.message() or exc}") from exc
    finally:
        await client.close()


async def embed(url: str, texts: list[str], model: str = "minilm_embed", timeout_s: float = 30.0) -> Any:
    """Unit-length embeddings (len(texts), dim) from Triton; one request, batched further by Triton."""
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    client = grpcclient.InferenceServerClient(url)
    inp = grpcclient.InferInput("TEXT", [len(texts), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
    try:
        result = await client.infer(model, [inp], client_timeout=timeout_s)
        return result.as_numpy("EMBEDDING")
    except InferenceServerException as exc:
        raise InferenceError(f"{model}: {exc.message() or exc}") from exc
    finally:
        await client.close()
