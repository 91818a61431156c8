"""SmolLM2-135M-Instruct on the platform side: its chat template and its tokenizer (the GGUF is located by
model_runtime.llama, which the Triton models use).

The prompt-build stage renders the chat template and counts tokens itself (as with TensorRT-LLM, whose
ensemble takes rendered text), so Triton models only ever see `text_input`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_runtime.llama import smollm2_gguf_path

# SmolLM2's own template adds this system turn when the conversation has none.
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


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


class Tokenizer:
    """The model's own tokenizer, loaded without weights (llama.cpp vocab_only: 0.1 s, a few MB)."""

    def __init__(self, gguf: Path | None = None) -> None:
        from llama_cpp import Llama

        self._vocab: Any = Llama(str(gguf or smollm2_gguf_path()), vocab_only=True, verbose=False)

    def count(self, text: str) -> int:
        return len(self._vocab.tokenize(text.encode(), add_bos=False, special=True))
