"""SmolLM2's chat template and tokenizer, checked against the model file itself."""

from __future__ import annotations

import pytest

from conflux.llm import Message, Tokenizer, render_chatml
from model_runtime.llama import smollm2_gguf_path


@pytest.fixture(scope="module")
def gguf_template() -> str:
    from llama_cpp import Llama

    vocab = Llama(str(smollm2_gguf_path()), vocab_only=True, verbose=False)
    return str(vocab.metadata["tokenizer.chat_template"])


@pytest.mark.parametrize(
    "messages",
    [
        [Message("user", "Hi")],
        [Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hello!"),
         Message("user", "What is Kafka?")],
    ],
)
def test_render_matches_the_template_inside_the_gguf(gguf_template: str, messages: list[Message]) -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    expected = ImmutableSandboxedEnvironment().from_string(gguf_template).render(
        messages=[m.__dict__ for m in messages], add_generation_prompt=True)
    assert render_chatml(messages) == expected


def test_tokenizer_counts_special_tokens_as_single_tokens() -> None:
    tok = Tokenizer()
    assert tok.count("<|im_start|>") == 1
    assert 3 <= tok.count("Hello world, how are you?") <= 10
    assert tok.count(render_chatml([Message("user", "Hi")])) > tok.count("Hi")
