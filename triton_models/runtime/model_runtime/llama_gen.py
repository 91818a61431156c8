"""Token-by-token generation on llama.cpp, with each token's log-probability when asked.

llama-cpp-python's own create_completion returns logprobs only for a model loaded with logits_all=True
(n_ctx x vocab floats, 400 MB for SmolLM2 at 2,048 tokens) and sorts the whole vocabulary in Python per
token. Here a logits processor, first in the sampler chain, sees the raw logits of the one position being
sampled: the chosen token's logprob and the top alternatives cost a log-softmax and an argpartition (about
0.2 ms a token), and nothing when logprobs are not asked for.

The logprobs are the model's own distribution, before temperature, penalties and grammar (vLLM's default,
"raw_logprobs"); OpenAI does not say which it reports.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model_runtime.llama import Sampling

MAX_TOP_LOGPROBS = 20  # OpenAI's bound on top_logprobs


@dataclass(frozen=True)
class Step:
    """Text that became decodable with this token (empty inside a multi-byte character), and the OpenAI
    logprobs.content entry of the token when logprobs were asked for."""

    text: str
    logprob: dict[str, Any] | None = None


@dataclass
class _Capture:
    """The logits processor: log-softmax of the raw logits at each sampled position."""

    top: int
    n_vocab: int
    logprobs: Any = None
    best: Any = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __call__(self, _input_ids: Any, scores: Any) -> Any:
        if len(scores) != self.n_vocab:  # not the full distribution: nothing sound to report
            self.logprobs = None
            return scores
        s = np.asarray(scores, dtype=np.float64)
        m = s.max()
        self.logprobs = s - (m + np.log(np.exp(s - m).sum()))
        if self.top:
            part = np.argpartition(-self.logprobs, self.top - 1)[:self.top]
            self.best = part[np.argsort(-self.logprobs[part], kind="stable")]
        return scores


def _token_entry(piece: bytes, logprob: float) -> dict[str, Any]:
    return {"token": piece.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(piece)}


def generate(llm: Any, prompt: str, max_tokens: int, temperature: float, sampling: Sampling,
             grammar: Any = None, top_logprobs: int | None = None) -> Iterator[Step]:
    """One Step per generated token until an end-of-generation token or max_tokens; ValueError when the
    prompt leaves no room in the context. top_logprobs None: no logprobs; 0..20: the chosen token's
    logprob and that many alternatives. Sampling matches create_completion's (top_k 40, min_p 0.05)."""
    from llama_cpp import LogitsProcessorList, llama_vocab_is_eog

    tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
    n_ctx = llm.n_ctx()
    if len(tokens) >= n_ctx:
        raise ValueError(f"the prompt's {len(tokens)} tokens exceed the context window of {n_ctx}")
    max_tokens = min(max_tokens, n_ctx - len(tokens))
    kwargs = sampling.llama_kwargs()
    seed = kwargs.pop("seed", None)
    llm.set_seed(seed if seed is not None else int(np.random.randint(0, 2**31)))
    capture = None
    processors = None
    if top_logprobs is not None:
        capture = _Capture(min(max(top_logprobs, 0), MAX_TOP_LOGPROBS), llm.n_vocab())
        processors = LogitsProcessorList([capture])
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    vocab = llm._model.vocab
    tokens_out = llm.generate(tokens, top_k=40, min_p=0.05, typical_p=1.0, repeat_penalty=1.0, temp=temperature,
                              grammar=grammar, logits_processor=processors, **kwargs)
    for produced, token in enumerate(tokens_out, start=1):
        if llama_vocab_is_eog(vocab, token):
            break
        piece = llm.detokenize([token], prev_tokens=tokens)
        tokens.append(token)
        entry = None
        if capture is not None and capture.logprobs is not None:
            entry = _token_entry(piece, float(capture.logprobs[token]))
            entry["top_logprobs"] = [_token_entry(llm.detokenize([int(t)]), float(capture.logprobs[t]))
                                     for t in capture.best]
        yield Step(decoder.decode(piece), entry)
        if produced >= max_tokens:
            return
    if tail := decoder.decode(b"", final=True):
        yield Step(tail)


def grammar_for(llm: Any, gbnf: str | None) -> Any:
    """A LlamaGrammar, or None; ValueError for a grammar llama.cpp cannot parse (handed on unchecked, an
    unparsable grammar crashes the process)."""
    if not gbnf:
        return None
    from llama_cpp.llama_grammar import LlamaGrammar

    from model_runtime.gbnf import parse_error

    if why := parse_error(gbnf, llm._model.vocab):
        raise ValueError(why)
    return LlamaGrammar.from_string(gbnf, verbose=False)
