"""Triton Python backend, decoupled: streams one response per generated token, then a final flag.

A cancelled request (the client went away) stops generating at the next token.
"""

import numpy as np
import triton_python_backend_utils as pb_utils
from llama_cpp import LlamaGrammar

from conflux.grammar import parse_error
from conflux.llm import generation_inputs, load_llama_for_triton


class TritonPythonModel:
    def initialize(self, args):
        self.llm = load_llama_for_triton(args["model_config"])

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                prompt, max_tokens, temperature, sampling, gbnf = generation_inputs(request, pb_utils)
                if gbnf and (why := parse_error(gbnf, self.llm._model.vocab)):
                    raise ValueError(why)  # handed on unchecked, an unparsable grammar crashes this process
                grammar = LlamaGrammar.from_string(gbnf, verbose=False) if gbnf else None
                for chunk in self.llm.create_completion(prompt, max_tokens=max_tokens, temperature=temperature,
                                                        stream=True, grammar=grammar, **sampling.llama_kwargs()):
                    if request.is_cancelled():
                        break
                    text = chunk["choices"][0]["text"]
                    if text:
                        out = pb_utils.Tensor("text_output", np.array([text.encode()], dtype=np.object_))
                        sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as exc:  # noqa: BLE001 - any failure must end the stream, never hang the caller
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"smollm2 failed: {exc}")),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
