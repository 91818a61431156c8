"""Triton Python backend: echo's pieces at a fixed pace, one thread per request (decoupled)."""

import json
import threading
import time

import triton_python_backend_utils as pb_utils

from model_runtime.echo import pieces
from model_runtime.tensors import text_tensor

MAX_STREAMS = 512  # beyond this, requests are refused at once rather than queued without bound


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.interval_s = float(params.get("piece_interval_ms", {}).get("string_value", "50")) / 1000
        self.active = 0
        self.lock = threading.Lock()

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            with self.lock:
                full = self.active >= MAX_STREAMS
                if not full:
                    self.active += 1
            if full:
                err = pb_utils.TritonError(f"echo_paced: more than {MAX_STREAMS} streams in flight")
                sender.send(pb_utils.InferenceResponse(error=err), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
            threading.Thread(target=self._stream, args=(request, sender), daemon=True).start()
        return None

    def _stream(self, request, sender):
        try:
            for piece in pieces(pb_utils, request):
                if request.is_cancelled():  # the caller went away: stop, like a real model would
                    break
                time.sleep(self.interval_s)
                out = text_tensor(pb_utils, "text_output", piece)
                sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:  # noqa: BLE001 - any failure must end the stream, never hang the caller
            err = pb_utils.TritonError(f"echo_paced failed: {exc}")
            sender.send(pb_utils.InferenceResponse(error=err), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        finally:
            with self.lock:
                self.active -= 1
