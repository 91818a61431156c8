"""Triton Python backend: a decoupled model that streams one response per piece, then a final flag."""

import triton_python_backend_utils as pb_utils

from model_runtime.echo import pieces
from model_runtime.tensors import text_tensor


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                for piece in pieces(pb_utils, request):
                    out = text_tensor(pb_utils, "text_output", piece)
                    sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as exc:  # noqa: BLE001 - any failure must end the stream, never hang the caller
                err = pb_utils.TritonError(f"echo failed: {exc}")
                sender.send(pb_utils.InferenceResponse(error=err),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
