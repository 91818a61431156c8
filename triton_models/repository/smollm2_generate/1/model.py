"""Triton Python backend, non-streaming: the whole answer in one response (with `logprobs`, a JSON list of
OpenAI logprobs.content entries, when return_log_probs asks for them)."""

import json

import triton_python_backend_utils as pb_utils

from model_runtime import llama_gen
from model_runtime.llama import generation_inputs, load_llama_for_triton
from model_runtime.tensors import text_tensor


class TritonPythonModel:
    def initialize(self, args):
        self.llm = load_llama_for_triton(args["model_config"])

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                g = generation_inputs(request, pb_utils)
                steps = list(llama_gen.generate(self.llm, g.prompt, g.max_tokens, g.temperature, g.sampling,
                                                llama_gen.grammar_for(self.llm, g.gbnf), g.top_logprobs))
                outputs = [text_tensor(pb_utils, "text_output", "".join(s.text for s in steps))]
                if g.top_logprobs is not None:
                    logprobs = [s.logprob for s in steps if s.logprob]
                    outputs.append(text_tensor(pb_utils, "logprobs", json.dumps(logprobs)))
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            except Exception as exc:  # noqa: BLE001 - reported to the caller as a Triton error
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"smollm2 failed: {exc}")))
        return responses
