"""A packaged GGUF chat model (SmolLM2-135M, Qwen2.5-Coder-0.5B: model_runtime.gguf_files) on llama.cpp for a
Triton model instance: how an instance loads it, and a Triton request read in TensorRT-LLM ensemble terms.

The chat template is applied before Triton (the platform's conflux/llm.py, as with TensorRT-LLM, whose ensemble
takes rendered text), so the models only ever see `text_input`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from model_runtime.errors import ModelRuntimeError
from model_runtime.gguf_files import gguf_path

DEFAULT_MAX_TOKENS = 256


class LLMError(ModelRuntimeError):
    """A request asks for unsupported decoding."""


def load_llama_for_triton(model_config_json: str) -> Any:
    """The model named by config.pbtxt's `gguf` parameter (default smollm2) on llama.cpp, with its `n_ctx`: one
    thread per instance to generate (two instances contend on 2 cores), and `n_threads_batch` (default 1) to read
    the prompt, which is where a grounded prompt's time goes."""
    from llama_cpp import Llama

    params = json.loads(model_config_json).get("parameters", {})
    n_ctx = int(params.get("n_ctx", {}).get("string_value", "2048"))
    name = params.get("gguf", {}).get("string_value", "smollm2")
    batch_threads = int(params.get("n_threads_batch", {}).get("string_value", "1"))
    return Llama(str(gguf_path(name)), n_ctx=n_ctx, n_threads=1, n_threads_batch=batch_threads, verbose=False)


@dataclass(frozen=True)
class Sampling:
    """Sampling knobs beyond temperature, in OpenAI's terms; None leaves the OpenAI default (top_p 1, no
    penalties, a random seed). They travel as TensorRT-LLM ensemble inputs (top_p, random_seed,
    presence_penalty, frequency_penalty)."""

    top_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    @classmethod
    def of(cls, record: dict[str, Any]) -> Sampling:
        """From a chat.requests / inference.requests record (fields absent in older records mean unset)."""
        return cls(record.get("top_p"), record.get("seed"), record.get("presence_penalty"),
                   record.get("frequency_penalty"))

    def llama_kwargs(self) -> dict[str, Any]:
        """llama.cpp's create_completion arguments (its own defaults differ from OpenAI's: top_p 0.95)."""
        kwargs: dict[str, Any] = {"top_p": 1.0 if self.top_p is None else self.top_p,
                                  "presence_penalty": self.presence_penalty or 0.0,
                                  "frequency_penalty": self.frequency_penalty or 0.0}
        if self.seed is not None:
            kwargs["seed"] = self.seed % 2**32  # llama.cpp's sampler seed is 32-bit
        return kwargs


@dataclass(frozen=True)
class GenerationRequest:
    """A Triton generation request in the TensorRT-LLM ensemble's terms."""

    prompt: str
    max_tokens: int
    temperature: float
    sampling: Sampling
    gbnf: str | None  # the grammar output must follow, or None
    top_logprobs: int | None  # None: no logprobs; else the chosen token's and this many alternatives


def generation_inputs(request: Any, pb_utils: Any) -> GenerationRequest:
    """The grammar (GBNF, or None) comes from guided_decoding_guide_type/_guide: json_schema (converted by
    gbnf.py) or gbnf. Logprobs are asked for by return_log_probs (TensorRT-LLM's name) and top_logprobs
    (Conflux's: TensorRT-LLM's ensemble returns no alternatives)."""

    def scalar(name: str, default: Any) -> Any:
        t = pb_utils.get_input_tensor_by_name(request, name)
        return default if t is None else t.as_numpy().reshape(-1)[0]

    def opt(name: str, kind: Any) -> Any:
        value = scalar(name, None)
        return None if value is None else kind(value)

    raw = scalar("text_input", b"")
    prompt = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    sampling = Sampling(opt("top_p", float), opt("random_seed", int), opt("presence_penalty", float),
                        opt("frequency_penalty", float))
    kind, guide = opt("guided_decoding_guide_type", _text), opt("guided_decoding_guide", _text)
    gbnf = None
    if kind == "json_schema" and guide:
        from model_runtime.gbnf import to_gbnf

        gbnf = to_gbnf(guide)
    elif kind == "gbnf" and guide:
        gbnf = guide
    elif kind:
        raise LLMError(f"guided decoding of type {kind!r} is not supported (json_schema, gbnf)")
    top = (opt("top_logprobs", int) or 0) if bool(scalar("return_log_probs", False)) else None
    return GenerationRequest(prompt, int(scalar("max_tokens", DEFAULT_MAX_TOKENS)),
                             float(scalar("temperature", 1.0)), sampling, gbnf, top)


def _text(raw: Any) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
