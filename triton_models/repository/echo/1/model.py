"""Triton Python backend: a decoupled model that streams one response per piece, then a final flag."""

import numpy as np
import triton_python_backend_utils as pb_utils

DEFAULT_TOKENS = 16
MAX_TOKENS_CAP = 4096


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                prompt = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)[0]
                text = prompt.decode("utf-8", "replace") if isinstance(prompt, bytes) else str(prompt)
                limit = pb_utils.get_input_tensor_by_name(request, "max_tokens")
                n = int(limit.as_numpy().reshape(-1)[0]) if limit is not None else DEFAULT_TOKENS
                n = max(0, min(n, MAX_TOKENS_CAP))
                words = text.split() or ["echo"]
                for i in range(n):
                    piece = (" " if i else "") + words[i % len(words)]
                    out = pb_utils.Tensor("text_output", np.array([piece.encode()], dtype=np.object_))
                    sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as exc:  # noqa: BLE001 - any failure must end the stream, never hang the caller
                err = pb_utils.TritonError(f"echo failed: {exc}")
                sender.send(pb_utils.InferenceResponse(error=err),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
