"""Grounded answers: how retrieved sources are laid out for a small model, which of them an answer used, and how
much of an answer they support.

Pure functions of text, shared by prompt build (the layout), the end of a request (the citations) and the quality
stage (the scores). The measure of support is lexical on purpose: it costs microseconds, needs no model, and a
small model that answers from its sources copies their words (a number, a name, a date) rather than paraphrasing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# Small models follow an instruction best when it sits next to the question, not in a system prompt far above it;
# the question comes last so that it is what the model read most recently. Tuned on the dev split of `make eval`
# only: asking Qwen2.5-0.5B to cite its sources as [n] made it answer with the mark alone ("[1]", 0 of 15 right);
# without that request it answers in words (4 of 15), and the citations are found from the answer instead (`used`).
INSTRUCTION = ("Answer the question using only the numbered sources below. If the sources do not contain the answer, "
               "say that they do not contain it.")

_MARK = re.compile(r"\[(\d{1,2}(?:\s*,\s*\d{1,2})*)\]")
_WORD = re.compile(r"[a-z0-9]+(?:[.,'][a-z0-9]+)*")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
# Function words carry no claim: an answer is not "supported" because its "the" and "of" occur in a source; nor is
# it unsupported for a preamble about the sources ("according to the information provided in the sources").
_FUNCTION_WORDS = """
a an and are as at be been but by can could did do does for from had has have he her his how i if in into is it
its may might more most no not of on or our she so such than that the their them then there these they this
those to was we were what when where which who whom why will with would you your also about after all any before
being both each few here just only other over same should some still through under until very while yes
according based information provided source sources context document documents text answer question mentioned
"""
_STOP = frozenset(_FUNCTION_WORDS.split())
# An answer that declines, or says its sources do not hold the answer: neither grounded nor a hallucination.
_REFUSAL = re.compile(
    r"\b(i (?:can(?:no|')t|am unable|'m unable|am not able|'m not able|do not know|don't know)|i'm sorry|"
    r"(?:do|does) not (?:contain|mention|say|provide|include|specify)|(?:don't|doesn't) (?:contain|mention|say|"
    r"provide|include|specify)|no (?:information|mention)|not (?:mentioned|specified|stated|provided) in)\b",
    re.IGNORECASE)
SUPPORTED = 0.5  # a sentence is supported when at least this share of its content words occur in the sources


def source_label(chunk: dict[str, Any]) -> str:
    return str(chunk.get("source") or chunk["document_id"])


def layout(chunks: Sequence[dict[str, Any]], question: str) -> str:
    """The newest user turn as the model reads it when retrieval found sources: the instruction, the sources
    numbered in rank order, the question last."""
    sources = "\n".join(f"[{i + 1}] ({source_label(c)}) {c['text']}" for i, c in enumerate(chunks))
    return f"{INSTRUCTION}\n\nSources:\n{sources}\n\nQuestion: {question}"


def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def cited(answer: str, n_sources: int) -> list[int]:
    """The 0-based indices of the sources an answer cites as [n] or [n, m], in order of first citation; numbers
    outside 1..n_sources (an invented source) are ignored."""
    seen: list[int] = []
    for mark in _MARK.findall(answer):
        for n in (int(x) for x in mark.split(",")):
            if 1 <= n <= n_sources and n - 1 not in seen:
                seen.append(n - 1)
    return seen


def support(sentence: str, vocabulary: set[str]) -> float | None:
    """The share of a sentence's content words found in `vocabulary`; None for a sentence with none."""
    words = content_words(_MARK.sub(" ", sentence))
    return sum(w in vocabulary for w in words) / len(words) if words else None


def used(answer: str, chunks: Sequence[dict[str, Any]]) -> list[int]:
    """The sources an answer used: those it cites; when it cites none, those that alone support half or more of
    its content words (a small model often answers from a source without citing it)."""
    if marks := cited(answer, len(chunks)):
        return marks
    return [i for i, c in enumerate(chunks) if (s := support(answer, set(content_words(c["text"])))) is not None
            and s >= SUPPORTED]


def is_refusal(answer: str) -> bool:
    return bool(_REFUSAL.search(answer))


def repetition(answer: str) -> float:
    """The share of the answer's word 4-grams that repeat an earlier one: near 0 for prose, near 1 for a model
    caught in a loop."""
    words = _WORD.findall(answer.lower())
    grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


@dataclass(frozen=True)
class Scores:
    grounded: float | None  # share of the answer's sentences supported by its sources; None without sources
    refusal: bool
    empty: bool
    repetition: float
    hallucinated: bool  # had sources, did not decline, and less than half of it is supported by them
    cited: list[int]  # 0-based indices of the sources it used (see `used`)


def score(answer: str, chunks: Sequence[dict[str, Any]]) -> Scores:
    """One answer's quality scores against the sources it was given."""
    empty = not answer.strip()
    refusal = not empty and is_refusal(answer)
    grounded: float | None = None
    use = used(answer, chunks) if chunks else []
    if chunks and not empty:
        # Against the sources it used; an answer that used none is measured against all it was given.
        vocabulary = {w for i in (use or range(len(chunks))) for w in content_words(chunks[i]["text"])}
        shares = [s for s in map(lambda x: support(x, vocabulary), _SENTENCE.split(answer)) if s is not None]
        grounded = sum(s >= SUPPORTED for s in shares) / len(shares) if shares else None
    return Scores(grounded=grounded, refusal=refusal, empty=empty, repetition=repetition(answer),
                  hallucinated=grounded is not None and not refusal and grounded < SUPPORTED, cited=use)
