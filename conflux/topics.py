"""The topic catalogue (infra/topics.toml) and its idempotent application to a Kafka cluster.

Applying creates missing topics, aligns retention and cleanup policy of existing ones and grows
partition counts; it never deletes a topic or shrinks one (Kafka cannot, and keys would move).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conflux.config import REPO_ROOT
from conflux.errors import CatalogueError
from conflux.kafka_access import KafkaAccess
from conflux.schemas import SchemaRegistry

CATALOGUE_PATH = REPO_ROOT / "infra" / "topics.toml"
_POLICIES = {"delete", "compact", "compact,delete"}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    schema: str
    key: str
    partitions: int
    retention_ms: int
    cleanup_policy: str
    description: str
    replication_factor: int = 1
    min_insync_replicas: int = 1
    pattern: bool = False  # a name template such as chat.replies.{edge_id}, created per instance

    @property
    def configs(self) -> dict[str, str]:
        return {
            "retention.ms": str(self.retention_ms),
            "cleanup.policy": self.cleanup_policy,
            "min.insync.replicas": str(self.min_insync_replicas),
        }

    def instantiate(self, **names: str) -> TopicSpec:
        """A concrete topic from a pattern, e.g. reply topic of edge instance 'edge-1'."""
        try:
            name = self.name.format(**names)
        except KeyError as exc:
            raise CatalogueError(f"pattern {self.name} needs {exc}") from exc
        return TopicSpec(**{**self.__dict__, "name": name, "pattern": False})


@dataclass(frozen=True)
class Catalogue:
    topics: tuple[TopicSpec, ...]
    patterns: tuple[TopicSpec, ...]

    def get(self, name: str) -> TopicSpec:
        for t in self.topics:
            if t.name == name:
                return t
        raise CatalogueError(f"topic {name!r} is not in the catalogue")

    def pattern(self, name: str) -> TopicSpec:
        for p in self.patterns:
            if p.name == name:
                return p
        raise CatalogueError(f"pattern {name!r} is not in the catalogue")


def _spec(raw: dict[str, Any], defaults: dict[str, Any], pattern: bool, where: str) -> TopicSpec:
    required = ("name", "schema", "key", "partitions", "retention_ms", "cleanup_policy", "description")
    missing = [k for k in required if k not in raw]
    if missing:
        raise CatalogueError(f"{where}: missing {', '.join(missing)}")
    unknown = set(raw) - set(required)
    if unknown:
        raise CatalogueError(f"{where}: unknown keys {sorted(unknown)}")
    if not isinstance(raw["partitions"], int) or raw["partitions"] < 1:
        raise CatalogueError(f"{where}: partitions must be a positive integer")
    if raw["cleanup_policy"] not in _POLICIES:
        raise CatalogueError(f"{where}: cleanup_policy must be one of {sorted(_POLICIES)}")
    if not isinstance(raw["retention_ms"], int) or (raw["retention_ms"] < 1 and raw["retention_ms"] != -1):
        raise CatalogueError(f"{where}: retention_ms must be positive or -1 (forever)")
    return TopicSpec(
        **{k: raw[k] for k in required},
        replication_factor=int(defaults.get("replication_factor", 1)),
        min_insync_replicas=int(defaults.get("min_insync_replicas", 1)),
        pattern=pattern,
    )


def load_catalogue(path: Path = CATALOGUE_PATH, registry: SchemaRegistry | None = None,
                   replication_factor: int | None = None) -> Catalogue:
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogueError(f"cannot read {path}: {exc}") from exc
    defaults = dict(doc.get("defaults", {}))
    if replication_factor is not None:
        defaults["replication_factor"] = replication_factor
    topics = tuple(_spec(t, defaults, False, f"{path.name} topic #{i + 1}") for i, t in enumerate(doc.get("topic", [])))
    patterns = tuple(_spec(t, defaults, True, f"{path.name} pattern #{i + 1}")
                     for i, t in enumerate(doc.get("pattern", [])))
    names = [t.name for t in (*topics, *patterns)]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise CatalogueError(f"duplicate topics in catalogue: {sorted(dupes)}")
    reg = registry or SchemaRegistry()
    for t in (*topics, *patterns):
        if t.schema not in reg.current:
            raise CatalogueError(f"topic {t.name}: schema {t.schema!r} has no file schemas/{t.schema}.avsc")
    return Catalogue(topics, patterns)


@dataclass(frozen=True)
class ApplyResult:
    created: list[str]
    altered: list[str]
    grown: list[str]
    unchanged: list[str]


async def apply_topics(kafka: KafkaAccess | str, specs: list[TopicSpec] | tuple[TopicSpec, ...]) -> ApplyResult:
    """Makes the cluster match the specs. Safe to run any number of times, from several processes."""
    from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
    from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**KafkaAccess.of(kafka).client_options(), request_timeout_ms=15000)
    await admin.start()
    created: list[str] = []
    altered: list[str] = []
    grown: list[str] = []
    unchanged: list[str] = []
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in specs if t.name not in existing]
        if missing:
            resp = await admin.create_topics([
                NewTopic(t.name, t.partitions, t.replication_factor, topic_configs=t.configs) for t in missing
            ])
            for name, code, *_ in resp.topic_errors:
                if code not in (0, TopicAlreadyExistsError.errno):
                    raise CatalogueError(f"creating topic {name} failed with Kafka error {code}")
            created = [t.name for t in missing]
        present = [t for t in specs if t.name in existing]
        if present:
            described = await admin.describe_topics([t.name for t in present])
            counts = {d["topic"]: len(d["partitions"]) for d in described}
            configs = await admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, t.name) for t in present])
            current: dict[str, dict[str, str]] = {}
            for resp in configs:
                for res in resp.resources:
                    current[res[3]] = {entry[0]: entry[1] for entry in res[4]}
            for t in present:
                if counts.get(t.name, t.partitions) < t.partitions:
                    await admin.create_partitions({t.name: NewPartitions(total_count=t.partitions)})
                    grown.append(t.name)
                have = current.get(t.name, {})
                if any(have.get(k) != v for k, v in t.configs.items()):
                    await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, t.name, configs=t.configs)])
                    altered.append(t.name)
                elif t.name not in grown:
                    unchanged.append(t.name)
    finally:
        await admin.close()
    return ApplyResult(created, altered, grown, unchanged)
