"""The topic catalogue: complete, valid, and strict about mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from conflux.errors import CatalogueError
from conflux.schemas import SchemaRegistry
from conflux.topics import CATALOGUE_PATH, load_catalogue


def test_catalogue_loads_and_covers_every_event(registry: SchemaRegistry) -> None:
    cat = load_catalogue(registry=registry)
    carried = {t.schema for t in (*cat.topics, *cat.patterns)}
    assert carried == set(registry.current)
    assert cat.get("chat.requests").key == "conversation_id"
    assert cat.get("documents.ingest").cleanup_policy == "compact"
    assert cat.get("conflux.deadletter").schema == "dead_letter"


def test_reply_topics_are_per_edge_instance(registry: SchemaRegistry) -> None:
    reply = load_catalogue(registry=registry).pattern("chat.replies.{edge_id}").instantiate(edge_id="edge-7")
    assert reply.name == "chat.replies.edge-7" and reply.schema == "token_chunk" and not reply.pattern
    with pytest.raises(CatalogueError):
        load_catalogue(registry=registry).pattern("chat.replies.{edge_id}").instantiate(other="x")


def test_replication_factor_can_be_overridden_for_clusters(registry: SchemaRegistry) -> None:
    cat = load_catalogue(registry=registry, replication_factor=3)
    assert {t.replication_factor for t in cat.topics} == {3}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace('cleanup_policy = "compact"', 'cleanup_policy = "shred"'), "cleanup_policy"),
        (lambda s: s.replace('schema = "dead_letter"', 'schema = "no_such_event"'), "no_such_event"),
        (lambda s: s.replace("partitions = 1\n", "partitions = 0\n", 1), "partitions"),
        (lambda s: s.replace('name = "chat.feedback"', 'name = "chat.requests"'), "duplicate"),
        (lambda s: s + '\n[[topic]]\nname = "x"\n', "missing"),
        (lambda s: s.replace("[defaults]", "[defaults"), "cannot read"),
    ],
)
def test_mistakes_are_reported_clearly(tmp_path: Path, registry: SchemaRegistry, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "topics.toml"
    bad.write_text(edit(CATALOGUE_PATH.read_text()))
    with pytest.raises(CatalogueError, match=message):
        load_catalogue(bad, registry=registry)


def test_downstream_documentation_lists_every_topic_as_catalogued(registry: SchemaRegistry) -> None:
    doc = (CATALOGUE_PATH.parent / "TOPICS.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): [c.strip().strip("`") for c in line.split("|")[2:4]]
            for line in doc.splitlines() if line.startswith("| `")}
    cat = load_catalogue(registry=registry)
    for t in (*cat.topics, *cat.patterns):
        assert t.name in rows, f"{t.name} missing from infra/TOPICS.md"
        assert rows[t.name] == [t.key, t.schema], f"{t.name}: TOPICS.md says {rows[t.name]}"
    assert len(rows) == len(cat.topics) + len(cat.patterns)
