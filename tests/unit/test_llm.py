"""The llama.cpp models' chat templates and tokenizers, checked against each model file itself."""

from __future__ import annotations

import pytest

from conflux.llm import Message, Tokenizer, Tokenizers, render_chatml
from model_runtime.gguf_files import gguf_path


def gguf_template(name: str) -> str:
    from llama_cpp import Llama

    vocab = Llama(str(gguf_path(name)), vocab_only=True, verbose=False)
    return str(vocab.metadata["tokenizer.chat_template"])


@pytest.mark.parametrize(("template", "gguf"), [("chatml", "smollm2"), ("chatml-qwen", "qwen2.5-coder-0.5b")])
@pytest.mark.parametrize(
    "messages",
    [
        [Message("user", "Hi")],
        [Message("system", "Be brief."), Message("user", "Hi"), Message("assistant", "Hello!"),
         Message("user", "What is Kafka?")],
    ],
)
def test_render_matches_the_template_inside_the_gguf(template: str, gguf: str, messages: list[Message]) -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    expected = ImmutableSandboxedEnvironment().from_string(gguf_template(gguf)).render(
        messages=[m.__dict__ for m in messages], add_generation_prompt=True)
    assert render_chatml(messages, template=template) == expected


def test_tokenizer_counts_special_tokens_as_single_tokens() -> None:
    tok = Tokenizer()
    assert tok.count("<|im_start|>") == 1
    assert 3 <= tok.count("Hello world, how are you?") <= 10
    assert tok.count(render_chatml([Message("user", "Hi")])) > tok.count("Hi")


def test_each_model_counts_with_its_own_vocabulary() -> None:
    tokenizers = Tokenizers()
    smol, qwen = tokenizers.get("smollm2"), tokenizers.get("qwen2.5-coder-0.5b")
    assert tokenizers.get("smollm2") is smol  # loaded once
    text = "Die Rückgabefrist beträgt 45 Tage ab Lieferung."  # a vocabulary difference shows off English
    assert qwen.count("<|im_start|>") == 1 and qwen.count(text) != smol.count(text)


@pytest.mark.parametrize("name", ["smollm2", "qwen2.5-coder-0.5b"])
def test_the_count_is_llama_cpps_own_tokenization(name: str) -> None:
    """Counted into a buffer kept between calls (conflux/llm.py), the count is what Llama.tokenize returns,
    for texts short and long (a buffer grown past its first size), special tokens, and text beyond ASCII."""
    tok = Tokenizers().get(name)
    texts = ["", "Hi", "<|im_start|>user\nHi<|im_end|>\n", "naïve café 😀 東京 " * 5,
             render_chatml([Message("user", "Tell me about event streaming. " * 400)]), "Hi again"]
    for text in texts:
        want = len(tok._vocab.tokenize(text.encode(), add_bos=False, special=True))
        assert tok.count(text) == want, text[:40]
