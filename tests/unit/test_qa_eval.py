"""`make eval`'s answer matching (producers/qa_eval.py): what counts as a right answer."""

from __future__ import annotations

from producers import qa_eval
from producers.qa_eval import Question, correct, token_recall

COUNT = Question("q1", "drop", "How many contenders were there for the Swedish throne in 1611?", ("2",))
SPAN = Question("q2", "triviaqa", "Where in England was Dame Judi Dench born?", ("York", "York UA"))


def test_a_count_is_the_first_number_the_answer_states_beyond_the_question() -> None:
    assert correct("According to the sources, there were 2 contenders in 1611.", COUNT)
    assert correct("Two contenders [1].", COUNT)  # a number word counts; a citation mark does not
    assert not correct("There were 14 contenders. They were:\n1. Carl Filip\n2. Gustavus", COUNT)
    assert not correct("[2]", COUNT) and not correct("1611", COUNT) and not correct("", COUNT)


def test_a_span_is_right_as_whole_words_after_normalising() -> None:
    assert correct("Dame Judi Dench was born in York, England.", SPAN)
    assert correct("YORK.", SPAN)
    assert not correct("She was born in Yorkshire.", SPAN)  # a longer word is not the answer


def test_token_recall_gives_partial_credit() -> None:
    bowl = Question("q3", "triviaqa", "Who won Super Bowl XX?", ("Chicago Bears", "Chicago Staleys"))
    assert token_recall("The Bears won Super Bowl XX.", bowl) == 0.5
    assert token_recall("The Chicago Bears.", bowl) == 1.0 and token_recall("New England", bowl) == 0.0


def test_a_span_cut_mid_word_is_widened_to_the_whole_word() -> None:
    context = "In 1931, Father Julius Nieuwland performed early work."
    assert qa_eval.whole_words(context, 9, "Father Julius Nieuwl") == "Father Julius Nieuwland"
    assert qa_eval.whole_words(context, 3, "1931") == "1931"  # already whole
    assert qa_eval.whole_words(context, 0, "not in the passage") == "not in the passage"
