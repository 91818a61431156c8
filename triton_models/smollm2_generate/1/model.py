"""Triton Python backend, non-streaming: the whole answer in one response."""

import numpy as np
import triton_python_backend_utils as pb_utils

from conflux.llm import load_llama_for_triton

DEFAULT_MAX_TOKENS = 256


def _scalar(request, name, default):
    t = pb_utils.get_input_tensor_by_name(request, name)
    return default if t is None else t.as_numpy().reshape(-1)[0]


class TritonPythonModel:
    def initialize(self, args):
        self.llm = load_llama_for_triton(args["model_config"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                raw = _scalar(request, "text_input", b"")
                prompt = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
                result = self.llm.create_completion(
                    prompt, max_tokens=int(_scalar(request, "max_tokens", DEFAULT_MAX_TOKENS)),
                    temperature=float(_scalar(request, "temperature", 0.0)))
                text = result["choices"][0]["text"]
                out = pb_utils.Tensor("text_output", np.array([text.encode()], dtype=np.object_))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            except Exception as exc:  # noqa: BLE001 - reported to the caller as a Triton error
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"smollm2 failed: {exc}")))
        return responses
