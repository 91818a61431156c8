"""Kafka ACLs from infra/kafka/acls.toml: each Conflux service its own principal with only what it needs.

`load_grants` reads and checks the file (names, operations, "@catalogue" expanded from infra/topics.toml);
`apply_acls` creates the bindings on the cluster. Creating a binding that exists is a no-op in Kafka, so
applying is idempotent. aiokafka's admin client has no ACL call, so its CreateAcls request (Kafka API 30; version
1 and later carry prefixed patterns) goes through the admin client's request method.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conflux.config import REPO_ROOT
from conflux.errors import ConfigError, ConfluxError
from conflux.kafka_access import KafkaAccess

ACLS_PATH = REPO_ROOT / "infra" / "kafka" / "acls.toml"
# Kafka's wire codes (org.apache.kafka.common.resource.ResourceType, acl.AclOperation, PatternType, ...)
RESOURCES = {"topic": 2, "group": 3, "cluster": 4}
OPERATIONS = {"ALL": 2, "READ": 3, "WRITE": 4, "CREATE": 5, "DELETE": 6, "ALTER": 7, "DESCRIBE": 8,
              "DESCRIBE_CONFIGS": 10, "ALTER_CONFIGS": 11}
LITERAL, PREFIXED, ALLOW = 3, 4, 3


class AclError(ConfluxError):
    """The broker refused to create an ACL binding (no authorizer, or the caller may not alter ACLs)."""


@dataclass(frozen=True)
class Binding:
    principal: str  # "User:<name>"
    resource: str
    name: str
    prefixed: bool
    operation: str

    def describe(self) -> str:
        pattern = "prefix " if self.prefixed else ""
        return f"{self.principal} {self.operation} on {self.resource} {pattern}{self.name!r}"


def load_grants(path: Path = ACLS_PATH, catalogue_topics: list[str] | None = None) -> list[Binding]:
    """Every (principal, resource, operation) binding the file grants, checked, "@catalogue" expanded."""
    if catalogue_topics is None:
        from conflux.topics import load_catalogue

        catalogue_topics = [t.name for t in load_catalogue().topics]
    try:
        grants = tomllib.loads(path.read_text())["grant"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    bindings: list[Binding] = []
    for i, g in enumerate(grants):
        where = f"{path.name} grant {i + 1} ({g.get('principal', '?')})"
        unknown = set(g) - {"principal", "resource", "names", "prefix", "operations"}
        if unknown:
            raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
        if not isinstance(g.get("principal"), str) or not g["principal"]:
            raise ConfigError(f"{where}: principal is a user name")
        if g.get("resource") not in RESOURCES:
            raise ConfigError(f"{where}: resource must be one of {sorted(RESOURCES)}")
        bad = [op for op in g.get("operations", []) if op not in OPERATIONS]
        if bad or not g.get("operations"):
            raise ConfigError(f"{where}: operations must be some of {sorted(OPERATIONS)}, got {bad or 'none'}")
        names: list[str] = []
        for name in g.get("names") or []:
            names += catalogue_topics if name == "@catalogue" else [name]
        if not names:
            raise ConfigError(f"{where}: names is empty")
        bindings += [Binding(f"User:{g['principal']}", g["resource"], name, bool(g.get("prefix", False)), op)
                     for name in names for op in g["operations"]]
    return bindings


def _request(b: Binding) -> Any:
    from aiokafka.protocol.admin import CreateAclsRequest

    return CreateAclsRequest(RESOURCES[b.resource], b.name, PREFIXED if b.prefixed else LITERAL, b.principal, "*",
                             OPERATIONS[b.operation], ALLOW)


async def apply_acls(kafka: KafkaAccess | str, bindings: list[Binding]) -> int:
    """Creates every binding (existing ones are left as they are); AclError names the first one refused."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**KafkaAccess.of(kafka).client_options(), request_timeout_ms=15000)
    await admin.start()
    try:
        for b in bindings:
            # One binding a request: the broker's answer then says which one failed. Any broker will do:
            # the request is forwarded to the controller.
            response = await admin._send_request(_request(b))
            for code, message in response.creation_responses:
                if code:
                    raise AclError(f"{b.describe()}: Kafka error {code}: {message or 'refused'}")
    finally:
        await admin.close()
    return len(bindings)
