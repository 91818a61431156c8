"""Triton Python backend, decoupled: streams one response per generated token, then a final flag.

A response carries the token's text and, when asked for (return_log_probs), `logprobs`: a JSON list of
OpenAI logprobs.content entries for the tokens behind that text (a multi-byte character can span several).
A cancelled request (the client went away) stops generating at the next token.
"""

import json

import triton_python_backend_utils as pb_utils

from model_runtime import llama_gen
from model_runtime.llama import generation_inputs, load_llama_for_triton
from model_runtime.tensors import text_tensor


class TritonPythonModel:
    def initialize(self, args):
        self.llm = load_llama_for_triton(args["model_config"])

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                g = generation_inputs(request, pb_utils)
                pending = []  # logprobs of tokens whose text is not out yet
                for step in llama_gen.generate(self.llm, g.prompt, g.max_tokens, g.temperature, g.sampling,
                                               llama_gen.grammar_for(self.llm, g.gbnf), g.top_logprobs):
                    if request.is_cancelled():
                        break
                    if step.logprob is not None:
                        pending.append(step.logprob)
                    if step.text:
                        outputs = [text_tensor(pb_utils, "text_output", step.text)]
                        if g.top_logprobs is not None:
                            outputs.append(text_tensor(pb_utils, "logprobs", json.dumps(pending)))
                            pending = []
                        sender.send(pb_utils.InferenceResponse(output_tensors=outputs))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as exc:  # noqa: BLE001 - any failure must end the stream, never hang the caller
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"smollm2 failed: {exc}")),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
