"""Token-by-token generation (model_runtime/llama_gen.py) on the packaged SmolLM2, against llama-cpp-python's own
create_completion, and logprobs released with their text (streams/logprobs.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from conflux.llm import Message, render_chatml
from model_runtime import llama_gen
from model_runtime.gguf_files import gguf_path
from model_runtime.llama import Sampling
from streams.logprobs import AlignedLogprobs

PROMPT = render_chatml([Message("user", "Name three colours, with an emoji for each.")])


@pytest.fixture(scope="module")
def llm() -> Any:
    from llama_cpp import Llama

    return Llama(str(gguf_path("smollm2")), n_ctx=2048, n_threads=1, n_threads_batch=1, verbose=False)


def _reference(llm: Any, temperature: float, seed: int | None) -> str:
    llm.reset()  # no reuse of the last prompt's cache: its numerics differ enough to flip a near tie
    kwargs = Sampling(seed=seed).llama_kwargs()
    done = llm.create_completion(PROMPT, max_tokens=40, temperature=temperature, **kwargs)
    return str(done["choices"][0]["text"])


@pytest.mark.parametrize(("temperature", "seed"), [(0.0, None), (1.0, 7)])
def test_the_same_text_as_create_completion_greedy_and_seeded(llm: Any, temperature: float, seed: int | None) -> None:
    llm.reset()
    steps = list(llama_gen.generate(llm, PROMPT, 40, temperature, Sampling(seed=seed)))
    ours = "".join(s.text for s in steps)
    # create_completion can run one token past max_tokens when a multi-byte character ends there (41 tokens for
    # 40 on this prompt): ours stops at 40, so its text is the reference's or a prefix of it.
    assert len(steps) <= 40 and len(ours) > 20 and _reference(llm, temperature, seed).startswith(ours)


def test_logprobs_are_a_distribution_and_greedy_picks_the_most_likely(llm: Any) -> None:
    steps = list(llama_gen.generate(llm, PROMPT, 12, 0.0, Sampling(), top_logprobs=5))
    entries = [s.logprob for s in steps if s.logprob is not None]
    assert len(entries) == 12  # one per token, text or not (a multi-byte character spans tokens)
    for e in entries:
        top = e["top_logprobs"]
        assert len(top) == 5
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert e["logprob"] == pytest.approx(top[0]["logprob"])  # greedy: the most likely token
        assert e["logprob"] <= 0 and sum(math.exp(t["logprob"]) for t in top) <= 1 + 1e-6
        assert bytes(e["bytes"]).decode("utf-8", "replace") == e["token"]
    assert b"".join(bytes(e["bytes"]) for e in entries).decode("utf-8", "replace") == "".join(s.text for s in steps)


def test_no_logprobs_unless_asked_and_max_tokens_holds(llm: Any) -> None:
    steps = list(llama_gen.generate(llm, PROMPT, 5, 0.0, Sampling()))
    assert len(steps) <= 6 and all(s.logprob is None for s in steps)


def test_a_prompt_longer_than_the_context_is_refused(llm: Any) -> None:
    with pytest.raises(ValueError, match="context window"):
        list(llama_gen.generate(llm, "word " * 3000, 5, 0.0, Sampling()))


def test_logprobs_leave_with_the_first_character_of_their_piece() -> None:
    a = AlignedLogprobs()
    a.add(5, [{"token": "Hello"}])
    a.add(1, [{"token": ","}])
    a.add(0, None)
    a.add(6, [{"token": " world"}])
    assert a.take(3) == [{"token": "Hello"}]  # a window may release part of a piece
    assert a.take(2) == []
    assert a.take(2) == [{"token": ","}, {"token": " world"}]
    assert a.take(0) == []  # the rest of " world" carries nothing more; a stop cut never releases the rest
