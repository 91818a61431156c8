"""Grounded answers: which sources an answer used, and its quality scores (conflux/grounding.py)."""

from __future__ import annotations

from conflux import grounding

SOURCES = [
    {"document_id": "refunds", "chunk_id": "refunds#0", "source": "refunds.md",
     "text": "Customers may ask for a refund within 45 days of purchase. Refunds are paid to the original card."},
    {"document_id": "limits", "chunk_id": "limits#0", "source": "limits.md",
     "text": "The API allows 600 calls per minute per key; bursts above that get HTTP 429."},
]


def test_cited_reads_markers_in_order_and_ignores_invented_sources() -> None:
    assert grounding.cited("Within 45 days [1]. Also see [2] and [1].", 2) == [0, 1]
    assert grounding.cited("Both say so [2, 1].", 2) == [1, 0]
    assert grounding.cited("As [7] says.", 2) == []  # there is no source 7
    assert grounding.cited("No marks here.", 2) == []


def test_used_falls_back_to_the_sources_that_support_an_uncited_answer() -> None:
    assert grounding.used("You have 45 days to ask for a refund [1].", SOURCES) == [0]
    assert grounding.used("A refund can be asked for within 45 days of purchase.", SOURCES) == [0]
    assert grounding.used("The API allows 600 calls per minute.", SOURCES) == [1]
    assert grounding.used("Penguins live in Antarctica.", SOURCES) == []


def test_a_supported_answer_is_grounded() -> None:
    s = grounding.score("Refunds can be asked for within 45 days of purchase [1].", SOURCES)
    assert s.grounded == 1.0 and not s.hallucinated and not s.refusal and s.cited == [0]


def test_an_answer_its_sources_do_not_support_is_a_hallucination() -> None:
    s = grounding.score("Refunds are possible for 12 months, handled by our Berlin office [1].", SOURCES)
    assert s.grounded == 0.0 and s.hallucinated and s.cited == [0]
    mixed = grounding.score("Refunds are paid to the original card. Berlin handles appeals yearly.", SOURCES)
    assert mixed.grounded == 0.5 and not mixed.hallucinated  # half of its sentences are supported


def test_saying_the_sources_lack_the_answer_is_a_refusal_not_a_hallucination() -> None:
    for text in ("The sources do not contain the office's opening hours.", "I'm sorry, I can't help with that.",
                 "That is not mentioned in the sources."):
        s = grounding.score(text, SOURCES)
        assert s.refusal and not s.hallucinated, text


def test_empty_repeated_and_unsourced_answers() -> None:
    assert grounding.score("  ", SOURCES).empty and grounding.score("  ", SOURCES).grounded is None
    loop = grounding.score("I like it. " * 20, [])
    assert loop.repetition > 0.8 and loop.grounded is None and not loop.hallucinated  # no sources: nothing to check
    assert grounding.repetition("Refunds are paid to the original card within 45 days.") == 0.0


def test_layout_numbers_sources_under_the_instruction_with_the_question_last() -> None:
    text = grounding.layout(SOURCES, "How long do I have?")
    assert text.startswith(grounding.INSTRUCTION)
    assert "[1] (refunds.md) Customers may" in text and "\n[2] (limits.md) The API" in text
    assert text.endswith("Question: How long do I have?")


def test_a_preamble_about_the_sources_is_neither_support_nor_claim() -> None:
    s = grounding.score("According to the information provided in the sources, refunds are paid to the original "
                        "card.", SOURCES)
    assert s.grounded == 1.0 and not s.hallucinated
