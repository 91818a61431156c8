"""Routing decisions: plan limits, context fit, availability, and auto-selection by complexity and cost."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from conflux.models import CatalogueModelError, ModelCatalogue, load_models
from conflux.routing import Features, RoutingError, complexity, difficulty, route

SMOL, QWEN, QWEN15 = "smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"
CPU_SERVED = {"smollm2", "smollm2_generate", "qwen25_coder", "qwen25_coder_generate", "qwen25_coder_1p5b",
              "qwen25_coder_1p5b_generate", "echo"}
ALL_SERVED = CPU_SERVED | {"ensemble"}


@pytest.fixture(scope="module")
def cat() -> ModelCatalogue:
    return load_models()


def feats(text: str = "Hi there", prompt_tokens: int = 30, out: int = 64, turns: int = 1) -> Features:
    return Features(prompt_tokens=prompt_tokens, max_output_tokens=out, turns=turns, text=text)


def test_explicit_model_is_honoured_when_the_plan_allows(cat: ModelCatalogue) -> None:
    d = route("echo", cat, cat.plan("free"), feats(), CPU_SERVED)
    assert d.model.id == "echo" and "explicit" in d.reason


def test_explicit_model_above_the_plan_is_refused(cat: ModelCatalogue) -> None:
    with pytest.raises(RoutingError) as err:
        route("llama-3.1-8b-instruct", cat, cat.plan("free"), feats(), ALL_SERVED)
    assert err.value.code == "model_not_allowed"


@pytest.mark.parametrize(("model", "served", "code"), [
    ("gpt-17", CPU_SERVED, "model_not_found"),
    ("llama-3.1-8b-instruct", {"echo"}, "no_capacity"),  # pro plan, but no GPU deployment nor its fallback
])
def test_unknown_or_unserved_models_fail_with_a_code(cat: ModelCatalogue, model: str, served: set[str],
                                                      code: str) -> None:
    with pytest.raises(RoutingError) as err:
        route(model, cat, cat.plan("pro"), feats(), served)
    assert err.value.code == code


def test_request_too_long_for_the_context_is_refused(cat: ModelCatalogue) -> None:
    with pytest.raises(RoutingError) as err:
        route("smollm2-135m-instruct", cat, cat.plan("free"), feats(prompt_tokens=2000, out=100), CPU_SERVED)
    assert err.value.code == "context_length_exceeded"


def test_complexity_levels() -> None:
    assert complexity(feats("hello")) == 0
    assert complexity(feats("hello", turns=8)) == 1
    assert complexity(feats("Please explain why this algorithm is O(n log n)")) == 2
    assert complexity(feats("fix this\n```python\nx=1\n```")) == 2


@pytest.mark.parametrize(("f", "level", "signal"), [
    (Features(30, 64, 1, "What is the refund window?", sources=3), 2, "grounded in 3 source(s)"),
    (feats("What is the refund window? And who approves it?"), 1, "2 questions"),
    (feats("Check these:\n1. the window\n2. the approver"), 1, "2 questions"),
    (Features(30, 64, 1, "Weather in Paris", guided=True), 1, "tools or JSON"),
    (feats("hi", out=1024), 1, "max_tokens 1024 > 512"),
    (feats("hi", prompt_tokens=2000), 2, "prompt 2000 > 1500 tokens"),
])
def test_difficulty_names_its_signals(f: Features, level: int, signal: str) -> None:
    need = difficulty(f)
    assert need.level == level and signal in need.signals and signal in str(need)


def test_a_greeting_stays_on_the_small_model_and_a_grounded_question_goes_to_the_stronger(
        cat: ModelCatalogue) -> None:
    hi = route("auto", cat, cat.plan("pro"), feats("Hello! How are you today?"), CPU_SERVED)
    assert hi.model.id == SMOL and hi.reason.startswith("auto: complexity 0,")
    grounded = Features(600, 64, 1, "How long do I have to ask for a refund?", sources=4)
    d = route("auto", cat, cat.plan("pro"), grounded, CPU_SERVED)
    assert d.model.id == QWEN15 and "complexity 2 (grounded in 4 source(s))" in d.reason
    assert [m.id for m in d.fallbacks] == [QWEN, SMOL]
    # Within the plan: a free tenant's grounded question gets the strongest model its plan allows.
    assert route("auto", cat, cat.plan("free"), grounded, CPU_SERVED).model.id == SMOL
    # The 1.5B model down: the strongest one left.
    down = route("auto", cat, cat.plan("pro"), grounded, CPU_SERVED - {"qwen25_coder_1p5b"})
    assert down.model.id == QWEN and f"not served now: {QWEN15}" in down.reason


def test_auto_never_picks_echo_and_prefers_the_cheapest_sufficient_model(cat: ModelCatalogue) -> None:
    simple = route("auto", cat, cat.plan("pro"), feats("hello"), ALL_SERVED)
    assert simple.model.id == "smollm2-135m-instruct"
    hard = route("auto", cat, cat.plan("pro"), feats("Prove that the algorithm terminates"), ALL_SERVED)
    assert hard.model.id == "llama-3.1-8b-instruct" and "complexity 2" in hard.reason
    assert "echo" not in hard.candidates and hard.estimated_cost_usd > 0


def test_auto_on_a_small_plan_takes_the_strongest_it_may_use(cat: ModelCatalogue) -> None:
    d = route("auto", cat, cat.plan("free"), feats("Prove that the algorithm terminates"), ALL_SERVED)
    assert d.model.id == "smollm2-135m-instruct" and "strongest" in d.reason


def test_an_unserved_model_falls_back_to_the_next_usable_one(cat: ModelCatalogue) -> None:
    d = route("llama-3.1-8b-instruct", cat, cat.plan("pro"), feats(), CPU_SERVED)  # no GPU deployment
    assert d.model.id == QWEN15 and d.reason == "fallback from llama-3.1-8b-instruct: not being served"
    assert d.candidates == ("llama-3.1-8b-instruct",) and [m.id for m in d.fallbacks] == [QWEN, SMOL]
    # Served: it answers itself, with its fallback ready for a failure before the first token.
    served = route("llama-3.1-8b-instruct", cat, cat.plan("pro"), feats(), ALL_SERVED)
    assert served.model.id == "llama-3.1-8b-instruct" and [m.id for m in served.fallbacks] == [QWEN15, QWEN, SMOL]
    # A fallback that is down is not offered.
    paced = route("echo-paced", cat, cat.plan("free"), feats(), {"echo_paced", "echo"})
    assert [m.id for m in paced.fallbacks] == ["echo"]
    assert route("echo-paced", cat, cat.plan("free"), feats(), {"echo_paced"}).fallbacks == ()


def test_auto_says_which_stronger_models_were_down(cat: ModelCatalogue) -> None:
    d = route("auto", cat, cat.plan("pro"), feats("Prove that the algorithm terminates"), CPU_SERVED)
    assert d.model.id == QWEN15 and "not served now: llama-3.1-8b-instruct" in d.reason
    d = route("auto", cat, cat.plan("pro"), feats("Prove that the algorithm terminates"),
              CPU_SERVED - {"qwen25_coder_1p5b"})
    assert d.model.id == QWEN and f"not served now: {QWEN15}, llama-3.1-8b-instruct" in d.reason


def test_auto_sends_longer_requests_to_the_stronger_cpu_model_the_plan_allows(cat: ModelCatalogue) -> None:
    long_chat = feats("and what about the next one?", turns=8)  # complexity 1: quality 2 or more
    assert route("auto", cat, cat.plan("pro"), long_chat, CPU_SERVED).model.id == QWEN
    assert route("auto", cat, cat.plan("free"), long_chat, CPU_SERVED).model.id == SMOL  # not on its plan
    assert route("auto", cat, cat.plan("pro"), feats("hello"), CPU_SERVED).model.id == SMOL  # easy: the small one
    # The 0.5B model down: the next one strong enough, then the strongest one left.
    assert route("auto", cat, cat.plan("pro"), long_chat, CPU_SERVED - {"qwen25_coder"}).model.id == QWEN15
    down = route("auto", cat, cat.plan("pro"), long_chat, CPU_SERVED - {"qwen25_coder", "qwen25_coder_1p5b"})
    assert down.model.id == SMOL and f"not served now: {QWEN}, {QWEN15}" in down.reason


def test_a_fallback_must_name_another_known_model(tmp_path: Path) -> None:
    src = Path(load_models.__defaults__[0]).read_text()  # type: ignore[index]
    bad = tmp_path / "models.toml"
    bad.write_text(src.replace('fallbacks = ["echo"]', 'fallbacks = ["gpt-17"]'))
    with pytest.raises(CatalogueModelError, match="fallback"):
        load_models(bad)


def test_auto_with_nothing_served_is_no_capacity(cat: ModelCatalogue) -> None:
    with pytest.raises(RoutingError) as err:
        route("auto", cat, cat.plan("pro"), feats(), set())
    assert err.value.code == "no_capacity"


def test_cost_uses_both_prices(cat: ModelCatalogue) -> None:
    m = replace(cat.get("smollm2-135m-instruct"), price_prompt_per_1k=1.0, price_completion_per_1k=2.0)
    assert m.cost(1000, 500) == pytest.approx(2.0)


def test_invalid_catalogue_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "models.toml"
    bad.write_text('[[model]]\nid = "x"\n')
    with pytest.raises(CatalogueModelError):
        load_models(bad)
