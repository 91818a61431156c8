"""The Triton Python-backend models over a packaged GGUF (model_runtime.llama), one class per serving mode.
Each model folder's model.py re-exports one of them as TritonPythonModel; which GGUF it serves comes from its
config.pbtxt (`gguf`, `n_ctx`).

- StreamingModel (decoupled): one response per piece of text, then a final flag. With return_log_probs, a
  response carries `logprobs`: a JSON list of OpenAI logprobs.content entries for the tokens behind its text
  (a multi-byte character can span several). A cancelled request (the client went away) stops at the next token,
  and one cancelled while it waited in the queue is not started.
- GenerateModel: the whole answer in one response (with `logprobs` for all of it when asked for).
"""

import json
from typing import Any

import triton_python_backend_utils as pb_utils

from model_runtime import llama_gen
from model_runtime.llama import generation_inputs, load_llama_for_triton
from model_runtime.tensors import text_tensor


class StreamingModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.name = args.get("model_name", "model")
        self.llm = load_llama_for_triton(args["model_config"])

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            sender = request.get_response_sender()
            if request.is_cancelled():
                # Cancelled while it waited in the queue (the worker gave up and handed it to a fallback): reading
                # its prompt would cost seconds of the CPU that the fallback now needs.
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError("cancelled before it started")),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                continue
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
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name} failed: {exc}")),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None


class GenerateModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.name = args.get("model_name", "model")
        self.llm = load_llama_for_triton(args["model_config"])

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = []
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
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name} failed: {exc}")))
        return responses
