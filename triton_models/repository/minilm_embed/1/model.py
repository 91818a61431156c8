"""Triton Python backend: batches of sentences in, unit-length 384-d embeddings out.

ONNX Runtime runs the forward pass (model_runtime/minilm_onnx.py, fp32: int8 weights moved similarities by up to
0.03, past the 0.01 the safety and retrieval thresholds tolerate); CONFLUX_EMBED_BACKEND=numpy selects the
NumPy reference instead."""

import os

import numpy as np
import triton_python_backend_utils as pb_utils

from model_runtime.minilm import MiniLMEncoder
from model_runtime.minilm_onnx import OnnxMiniLMEncoder


class TritonPythonModel:
    def initialize(self, args):
        backend = os.environ.get("CONFLUX_EMBED_BACKEND", "onnx")
        self.encoder = MiniLMEncoder() if backend == "numpy" else OnnxMiniLMEncoder(quantize=False)

    def execute(self, requests):
        # Dynamic batching hands over several requests at once: encode them in one forward pass.
        texts, sizes = [], []
        for request in requests:
            arr = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy().reshape(-1)
            batch = [t.decode("utf-8", "replace") if isinstance(t, bytes) else str(t) for t in arr]
            texts.extend(batch)
            sizes.append(len(batch))
        vectors = self.encoder.encode(texts)
        responses, start = [], 0
        for n in sizes:
            out = pb_utils.Tensor("EMBEDDING", vectors[start:start + n].astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += n
        return responses
