"""The safety taxonomy (infra/safety_taxonomy.toml) and the per-tenant policy over it.

Every category a verdict names comes from the taxonomy; a policy says what each one does (block, flag or allow)
for a tenant: the taxonomy's default action, overridden by the tenant's own setting except for locked
categories, which always block.
"""

from __future__ import annotations

import json
import logging
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from conflux.config import REPO_ROOT
from conflux.errors import ConfluxError

TAXONOMY_PATH = REPO_ROOT / "infra" / "safety_taxonomy.toml"
ACTIONS = ("block", "flag", "allow")
log = logging.getLogger(__name__)


class PolicyError(ConfluxError):
    """A policy names an unknown category or action, or tries to loosen a locked category."""


@dataclass(frozen=True)
class Category:
    id: str
    kind: str  # hazard | technique | data
    title: str
    action: str
    locked: bool
    locked_why: str
    openai: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class Taxonomy:
    categories: dict[str, Category]

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self.categories)

    def of_kind(self, kind: str) -> tuple[str, ...]:
        return tuple(c.id for c in self.categories.values() if c.kind == kind)

    def policy(self, overrides: dict[str, str] | None = None) -> Policy:
        """The tenant's effective policy. Overrides are checked again here (not only when set), so a tenant
        record written by an older version or by hand cannot unlock a locked category."""
        actions = {c.id: c.action for c in self.categories.values()}
        for cid, action in (overrides or {}).items():
            self.check_override(cid, action)
            actions[cid] = action
        return Policy(actions)

    def check_override(self, cid: str, action: str) -> None:
        if cid not in self.categories:
            raise PolicyError(f"unknown safety category {cid!r}; known: {', '.join(self.ids)}")
        if action not in ACTIONS:
            raise PolicyError(f"unknown action {action!r} for {cid}; use one of {', '.join(ACTIONS)}")
        cat = self.categories[cid]
        if cat.locked and action != "block":
            raise PolicyError(f"{cid} always blocks and cannot be changed: {cat.locked_why}")


@dataclass(frozen=True)
class Policy:
    actions: dict[str, str]

    def verdict(self, categories: list[str]) -> str:
        """BLOCK if any category blocks, FLAG if any flags, else ALLOW."""
        acts = {self.actions.get(c, "block") for c in categories}  # a category unknown here is not waved through
        return "BLOCK" if "block" in acts else ("FLAG" if "flag" in acts else "ALLOW")


def parse(text: str) -> Taxonomy:
    raw = tomllib.loads(text)["categories"]
    cats = {cid: Category(id=cid, kind=c["kind"], title=c["title"], action=c["action"],
                          locked=bool(c.get("locked", False)), locked_why=c.get("locked_why", ""),
                          openai=tuple(c.get("openai", ())), description=c["description"])
            for cid, c in raw.items()}
    for c in cats.values():
        if c.action not in ACTIONS or (c.locked and c.action != "block"):
            raise PolicyError(f"taxonomy: {c.id} has action {c.action!r}")
    return Taxonomy(cats)


@lru_cache(maxsize=4)
def load(path: Path = TAXONOMY_PATH) -> Taxonomy:
    return parse(path.read_text())


def parse_overrides(raw: Any) -> dict[str, str]:
    """A tenant record's stored policy (JSON object category -> action), or {} when unset."""
    if not raw:
        return {}
    value = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    if not isinstance(value, dict):
        raise PolicyError("a safety policy is a JSON object of category -> action")
    return {str(k): str(v) for k, v in value.items()}


def tenant_policy(tenant_id: str, stored: bytes | str | None) -> Policy:
    """A tenant's policy from its stored record (the tenant hash's `safety_policy`). `conflux tenants set-policy`
    validates what it stores; a record that fails validation anyway (written by hand) falls back to the
    defaults, which are stricter than any override could be for locked categories, and says so in the log."""
    try:
        return _policy_of(stored.decode() if isinstance(stored, bytes) else stored)
    except (PolicyError, ValueError) as exc:
        log.warning("safety policy of tenant %s ignored: %s", tenant_id, exc)
        return load().policy()


@lru_cache(maxsize=1024)
def _policy_of(stored: str | None) -> Policy:
    # Cached per stored string: a request's hot path reads the record, not the taxonomy file.
    return load().policy(parse_overrides(stored))
