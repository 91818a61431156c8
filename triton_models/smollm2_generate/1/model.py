"""Triton Python backend, non-streaming: the whole answer in one response."""

import numpy as np
import triton_python_backend_utils as pb_utils
from llama_cpp import LlamaGrammar

from conflux.grammar import parse_error
from conflux.llm import generation_inputs, load_llama_for_triton


class TritonPythonModel:
    def initialize(self, args):
        self.llm = load_llama_for_triton(args["model_config"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                prompt, max_tokens, temperature, sampling, gbnf = generation_inputs(request, pb_utils)
                if gbnf and (why := parse_error(gbnf, self.llm._model.vocab)):
                    raise ValueError(why)  # handed on unchecked, an unparsable grammar crashes this process
                grammar = LlamaGrammar.from_string(gbnf, verbose=False) if gbnf else None
                result = self.llm.create_completion(prompt, max_tokens=max_tokens, temperature=temperature,
                                                    grammar=grammar, **sampling.llama_kwargs())
                text = result["choices"][0]["text"]
                out = pb_utils.Tensor("text_output", np.array([text.encode()], dtype=np.object_))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            except Exception as exc:  # noqa: BLE001 - reported to the caller as a Triton error
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"smollm2 failed: {exc}")))
        return responses
