"""Streaming generation over Triton's gRPC API (decoupled models: one response per piece).

The same client code serves the llama.cpp models here and TensorRT-LLM on GPUs: both take a PROMPT
and stream TEXT pieces, ending with an empty final response.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from conflux.errors import ConfluxError


class InferenceError(ConfluxError):
    """Triton refused, failed or timed out on a generation."""


@dataclass(frozen=True)
class Piece:
    text: str
    elapsed_ms: float  # since the request was sent


async def stream_generate(url: str, model: str, prompt: str, max_tokens: int,
                          timeout_s: float = 30.0) -> AsyncIterator[Piece]:
    """Yields pieces as Triton produces them; raises InferenceError, never hangs past timeout_s."""
    import tritonclient.grpc.aio as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(url)
    inp = grpcclient.InferInput("PROMPT", [1], "BYTES")
    inp.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    lim = grpcclient.InferInput("MAX_TOKENS", [1], "INT32")
    lim.set_data_from_numpy(np.array([max_tokens], dtype=np.int32))

    async def requests() -> AsyncIterator[dict[str, object]]:
        # The aio client has no keyword for it: the empty final response is asked for as a parameter.
        yield {"model_name": model, "inputs": [inp, lim], "request_id": str(uuid.uuid4()),
               "parameters": {"triton_enable_empty_final_response": True}}

    t0 = time.perf_counter()
    try:
        async for result, error in client.stream_infer(requests(), stream_timeout=timeout_s):
            if error is not None:
                raise InferenceError(f"{model}: {error}")
            response = result.get_response()
            final = response.parameters.get("triton_final_response")
            text = result.as_numpy("TEXT")
            if text is not None and len(text):
                raw = text.reshape(-1)[0]
                yield Piece(raw.decode() if isinstance(raw, bytes) else str(raw),
                            (time.perf_counter() - t0) * 1000)
            if final is not None and final.bool_param:
                return
        raise InferenceError(f"{model}: stream ended without a final response")
    except InferenceServerException as exc:
        raise InferenceError(f"{model}: {exc.message() or exc}") from exc
    finally:
        await client.close()
