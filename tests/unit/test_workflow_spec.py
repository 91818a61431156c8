"""Workflows as data: the graph rules of conflux/workflow_spec.py, the checks on a workflow file, and the pure
parts of the article steps and API (headings from a model's outline, a failed edit, a run request's checks)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from conflux.models import load_models
from conflux.workflow_spec import Workflow, WorkflowSpecError, load_workflow
from edge.errors import ApiError
from edge.workflows import article_input
from streams.workflow.steps import _failed_edit, _headings, _whole_sentences

ARTICLE = load_workflow("article")

GOOD = """
name = "{name}"
items_from = "plan"
[[step]]
id = "plan"
kind = "outline"
prompt = "Headings for {{topic}}"
max_tokens = 50
{extra}
[[step]]
id = "last"
kind = "generate"
after = ["plan"]
prompt = "Write about {{topic}}"
max_tokens = 10
"""


def _write(tmp_path: Path, text: str, name: str = "flow") -> Workflow:
    (tmp_path / f"{name}.toml").write_text(text)
    return load_workflow(name, tmp_path)


def test_the_article_graph_fans_out_per_section_and_in_at_the_edit() -> None:
    assert ARTICLE.roots() == ["outline"]
    assert ARTICLE.instances(None) == ["outline", "edit"]  # items unknown until the outline has run
    assert ARTICLE.instances(2) == ["outline", "research.0", "research.1", "write.0", "write.1", "edit"]
    assert ARTICLE.ready_after(set(), 2) == ["outline"]
    # The fan-out: every section's research is ready once the outline is done.
    assert ARTICLE.ready_after({"outline"}, 3) == ["research.0", "research.1", "research.2"]
    # A per-item step waits only for its own item.
    assert ARTICLE.ready_after({"outline", "research.1"}, 2) == ["research.0", "write.1"]
    # The fan-in: the edit waits for every section.
    done = {"outline", "research.0", "research.1", "write.0"}
    assert ARTICLE.ready_after(done, 2) == ["write.1"]
    assert ARTICLE.ready_after(done | {"write.1"}, 2) == ["edit"]
    assert ARTICLE.ready_after(done | {"write.1", "edit"}, 2) == []


@pytest.mark.parametrize("instance", ["write", "edit.0", "write.x", "nope", "write.-1"])
def test_a_step_name_outside_the_workflow_is_refused(instance: str) -> None:
    with pytest.raises(WorkflowSpecError):
        ARTICLE.step(instance)


def test_step_instances_name_their_step_and_item() -> None:
    assert ARTICLE.step("write.2")[0].id == "write" and ARTICLE.step("write.2")[1] == 2
    assert ARTICLE.step("edit") == (ARTICLE.by_id["edit"], None)


def test_a_valid_file_loads(tmp_path: Path) -> None:
    wf = _write(tmp_path, GOOD.format(name="flow", extra=""))
    assert [s.id for s in wf.steps] == ["plan", "last"] and wf.items_from == "plan"


@pytest.mark.parametrize(("text", "why"), [
    (GOOD.format(name="other", extra=""), "differs from the file's name"),
    ("name = 'flow'\nitems_from = 'x'\n", "at least one"),
    ("name = 'flow'\n[[step]]\nid = 'a'\nkind = 'outline'\n", "KeyError"),  # items_from missing
    ("name = ", "cannot read"),
    (GOOD.format(name="flow", extra="tone = 'formal'"), "TypeError"),  # an unknown step key
    (GOOD.format(name="flow", extra="").replace('"outline"', '"shell"'), "kind 'shell'"),
    (GOOD.format(name="flow", extra="").replace('after = ["plan"]', 'after = ["later"]'), "declared before"),
    (GOOD.format(name="flow", extra="").replace("Write about {topic}", "Write {secret}"), "uses ['secret']"),
    (GOOD.format(name="flow", extra="").replace("Write about {topic}", "Write {draft}"), "uses ['draft']"),
    (GOOD.format(name="flow", extra="").replace("max_tokens = 10", "max_tokens = 0"), "needs a prompt"),
    (GOOD.format(name="flow", extra="").replace('items_from = "plan"', 'items_from = "last"'), "single outline"),
    (GOOD.format(name="flow", extra="") + '[[step]]\nid = "r"\nkind = "retrieve"\nafter = ["plan"]\n',
     "last step must be a single generate"),
    (GOOD.format(name="flow", extra='[[step]]\nid = "each"\nkind = "generate"\nforeach = true\n'
                 'prompt = "{{topic}}"\nmax_tokens = 5\n'), "step each runs per item, so it must come after plan"),
    (GOOD.format(name="flow", extra="").replace('items_from = "plan"', 'items_from = "plan"\nmax_attempts = 0'),
     "must be positive"),
    (GOOD.format(name="flow", extra="").replace('items_from = "plan"', 'items_from = "plan"\nmodels = [3]'),
     "models must be a list of model ids"),
    (GOOD.format(name="flow", extra='[[step]]\nid = "r"\nkind = "retrieve"\nafter = ["plan"]\nforeach = true\n'
                 'min_score = 2.0\n'), "min_score is a cosine similarity"),
    (GOOD.format(name="flow", extra="").replace("max_tokens = 10", "max_tokens = 10\nfrequency_penalty = 3.0"),
     "frequency_penalty is from -2 to 2"),
])
def test_an_invalid_file_is_refused_saying_why(tmp_path: Path, text: str, why: str) -> None:
    with pytest.raises(WorkflowSpecError, match=why.replace("[", r"\[").replace("]", r"\]")):
        _write(tmp_path, text)


def test_a_workflow_name_is_a_plain_name() -> None:
    for name in ("../etc/passwd", "missing"):
        with pytest.raises(WorkflowSpecError, match="unknown workflow"):
            load_workflow(name)


@pytest.mark.parametrize(("text", "n", "expected"), [
    ('["Tides", "The Moon", "tides"]', 4, ["Tides", "The Moon"]),  # repeats dropped, case-blind
    ("1. Tides\n2) The Moon\n- Waves\n## Storms", 3, ["Tides", "The Moon", "Waves"]),
    ('["A", "B", "C"]', 2, ["A", "B"]),
    ('{"not": "a list"}', 2, []),
    ("   \n\n", 2, []),
    ('["' + "x" * 100 + '"]', 1, ["x" * 80]),
])
def test_headings_come_from_a_json_array_or_lines(text: str, n: int, expected: list[str]) -> None:
    assert _headings(text, n) == expected


DRAFT = "## One\nFirst section text here.\n\n## Two\nSecond section text here."


@pytest.mark.parametrize(("text", "failed"), [
    (DRAFT.replace("text here", "words here"), None),
    ("## One\nshort", "characters for a draft of"),
    ("## One\nFirst section text here.\n\n## One\nSecond section text here.", "headings"),
    ("## Two\nSecond section text here.\n\n## One\nFirst section text here.", "headings"),
    (DRAFT + "\n\n## Three\nAn added section that was not in the draft.", "headings"),
])
def test_an_edit_that_breaks_the_articles_shape_is_failed(text: str, failed: str | None) -> None:
    why = _failed_edit(DRAFT, text, 0.5)
    assert why is None if failed is None else failed in (why or "")


MODELS = load_models()


@pytest.mark.parametrize(("body", "param", "status"), [
    ({"topic": "x", "length": 3}, "length", 400),
    ({"topic": None}, "topic", 400),
    ({"topic": "x", "sections": ["a"] * 9}, "sections", 400),
    ({"topic": "x", "sections": ["a" * 81]}, "sections", 400),
    ({"topic": "x", "sections": 2.5}, "sections", 400),
    ({"topic": "x", "audience": "a" * 201}, "audience", 400),
    ({"topic": "x", "model": 7}, "model", 404),
])
def test_article_input_names_the_field_at_fault(body: dict[str, Any], param: str, status: int) -> None:
    with pytest.raises(ApiError) as caught:
        article_input(body, ARTICLE, MODELS, "enterprise")
    assert caught.value.status == status and caught.value.param == param


def test_article_input_trims_and_fills_defaults() -> None:
    got = article_input({"topic": "  tides ", "sections": [" A ", "B"], "audience": " "}, ARTICLE, MODELS, "free")
    assert got == {"topic": "tides", "audience": None, "sections": ["A", "B"], "model": "smollm2-135m-instruct"}
    assert article_input({"topic": "t"}, ARTICLE, MODELS, "free")["sections"] == 4


def test_the_default_model_is_the_workflows_first_the_plan_allows() -> None:
    assert article_input({"topic": "t"}, ARTICLE, MODELS, "pro")["model"] == "qwen2.5-coder-0.5b-instruct"
    assert article_input({"topic": "t"}, ARTICLE, MODELS, "free")["model"] == "smollm2-135m-instruct"
    assert article_input({"topic": "t", "model": "echo"}, ARTICLE, MODELS, "pro")["model"] == "echo"
    bare = dataclasses.replace(ARTICLE, models=("gpt-17",))  # none known: the platform's default
    assert article_input({"topic": "t"}, bare, MODELS, "pro")["model"] == "smollm2-135m-instruct"


CUT = "Short. Then a long sentence that the limit cut off somewhere in its middle"


@pytest.mark.parametrize(("text", "expected"), [
    ("Tides rise twice a day. The Moon pulls the sea [1]. Spring tides are the",
     "Tides rise twice a day. The Moon pulls the sea [1]."),
    ("One whole sentence.", "One whole sentence."),
    (CUT, CUT),  # the last full sentence is under half of it: kept whole
    ("It is the Moon and the Sun together, is it not? And the", "It is the Moon and the Sun together, is it not?"),
])
def test_a_section_cut_by_max_tokens_ends_at_its_last_sentence(text: str, expected: str) -> None:
    assert _whole_sentences(text) == expected
