"""The llama.cpp models on the platform side: their chat templates and their tokenizers (the GGUFs are located by
model_runtime.gguf_files, which the Triton models use too).

The prompt-build stage renders the chat template and counts tokens itself (as with TensorRT-LLM, whose
ensemble takes rendered text), so Triton models only ever see `text_input`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_runtime.gguf_files import gguf_path

# The system turn each model's own template adds when the conversation has none (catalogue `template`).
DEFAULT_SYSTEM = {
    "chatml": "You are a helpful AI assistant named SmolLM, trained by Hugging Face",  # SmolLM2
    "chatml-qwen": "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.",  # Qwen2.5
}
DEFAULT_TOKENIZER = "smollm2"  # what counts the prompt before `auto` has chosen a model


@dataclass(frozen=True)
class Message:
    role: str
    content: str


def render_chatml(messages: Sequence[Message], add_generation_prompt: bool = True, template: str = "chatml") -> str:
    """ChatML as the model's own template writes it for a chat without tools (checked against the template
    inside each GGUF: tests/unit/test_llm.py); they differ only in the default system turn."""
    parts = []
    if not messages or messages[0].role != "system":
        parts.append(f"<|im_start|>system\n{DEFAULT_SYSTEM[template]}<|im_end|>\n")
    parts += [f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        parts.append("<|im_start|>assistant\n")
    return "".join(parts)


class Tokenizer:
    """A model's own tokenizer, loaded without weights (llama.cpp vocab_only: 0.1 s, a few MB)."""

    def __init__(self, gguf: Path | None = None) -> None:
        from llama_cpp import Llama

        self._vocab: Any = Llama(str(gguf or gguf_path(DEFAULT_TOKENIZER)), vocab_only=True, verbose=False)
        self._buffer: Any = None

    def count(self, text: str) -> int:
        """The prompt's size in tokens, counted once per request. llama.cpp's own count into a buffer kept
        between calls: `Llama.tokenize` sizes its buffer by the training context, which a vocab-only load
        reports as 0, so it tokenized every text twice (0.39 ms against 0.15 for a short prompt)."""
        import llama_cpp

        data = text.encode()
        size = len(data) + 8  # at most one token per byte, plus room for specials
        if self._buffer is None or len(self._buffer) < size:
            self._buffer = (llama_cpp.llama_token * max(size, 4096))()
        n = llama_cpp.llama_tokenize(self._vocab._model.vocab, data, len(data), self._buffer, len(self._buffer),
                                     False, True)
        if n < 0:  # cannot happen by the bound above; kept so a surprise is a right answer, not a wrong one
            return len(self._vocab.tokenize(data, add_bos=False, special=True))
        return int(n)


class Tokenizers:
    """Each model's tokenizer by its catalogue `tokenizer` (a packaged GGUF's name), loaded on first use."""

    def __init__(self) -> None:
        self._loaded: dict[str, Tokenizer] = {}

    def get(self, name: str = DEFAULT_TOKENIZER) -> Tokenizer:
        if name not in self._loaded:
            self._loaded[name] = Tokenizer(gguf_path(name))
        return self._loaded[name]
