"""The quality stage (streams/quality.py): one quality.scores event per delivered answer, under its schema."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from conflux.models import load_models
from conflux.promserve import Metrics
from conflux.schemas import SchemaRegistry
from conflux.serde import AvroSerde, new_envelope
from streams import quality
from streams.prompt_build import Built

SOURCES = (
    {"document_id": "refunds", "chunk_id": "refunds#0", "source": "refunds.md", "score": 0.61,
     "text": "Customers may ask for a refund within 45 days of purchase."},
    {"document_id": "limits", "chunk_id": "limits#0", "source": "limits.md", "score": 0.42,
     "text": "The API allows 600 calls per minute per key."},
)


class Events:
    def __init__(self) -> None:
        self.added: list[tuple[str, dict[str, Any]]] = []

    async def add(self, topic: str, record: dict[str, Any], key: str) -> None:
        self.added.append((topic, record))


async def _scored(text: str, sources: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    env = new_envelope(tenant_id="t1", conversation_id="c1", request_id="r1", producer="test")
    deps = SimpleNamespace(metrics=Metrics("test", {}), envelope=lambda src: dict(src))
    rc = SimpleNamespace(env=env, key="c1", events=Events())
    gen = SimpleNamespace(text=text, model=load_models().get("qwen2.5-coder-0.5b-instruct"))
    await quality.record(deps, rc, Built([], 10, sources=sources), gen, "stop")  # type: ignore[arg-type]
    ((topic, record),) = rc.events.added
    assert topic == "quality.scores"
    AvroSerde(SchemaRegistry()).encode("quality_scored", record)  # the topic's contract holds
    return dict(record)


async def test_a_grounded_answer_names_the_chunk_it_used() -> None:
    r = await _scored("You can ask for a refund within 45 days of purchase [1].", SOURCES)
    assert r["grounded"] == 1.0 and not r["hallucinated"] and r["cited"] == ["refunds#0"]
    assert r["sources"] == 2 and r["model"] == "qwen2.5-coder-0.5b-instruct" and r["scorer"] == "lexical-v1"


async def test_an_invented_fact_is_a_hallucination_and_a_chat_without_sources_is_not_judged() -> None:
    r = await _scored("Refunds take 12 months and need a notary's stamp.", SOURCES)
    assert r["hallucinated"] and r["grounded"] == 0.0 and r["cited"] == []
    chat = await _scored("Hello! How can I help you today?", ())
    assert chat["grounded"] is None and not chat["hallucinated"] and chat["sources"] == 0
    assert (await _scored("", ()))["empty"]
