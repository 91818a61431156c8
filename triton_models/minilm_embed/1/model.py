"""Triton Python backend: batches of sentences in, unit-length 384-d embeddings out."""

import numpy as np
import triton_python_backend_utils as pb_utils

from conflux.minilm import MiniLMEncoder


class TritonPythonModel:
    def initialize(self, args):
        self.encoder = MiniLMEncoder()

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
