"""`conflux` command line: run the local stack, manage topics and schemas, run the demo."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from conflux.config import Settings
from conflux.errors import ConfluxError
from conflux.reply_topics import GRACE_S

T = TypeVar("T")


def _progress(msg: str) -> None:
    print(f"[conflux {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _print_status(table: dict[str, dict[str, object]]) -> None:
    print(f"{'service':<13}{'health':<10}{'pid':>8}{'rss MB':>9}  endpoint / log")
    for name, row in table.items():
        health = "healthy" if row["healthy"] else "DOWN"
        pid = row["pid"] if row["pid"] is not None else "-"
        rss = row["rss_mb"] if row["rss_mb"] is not None else "-"
        print(f"{name:<13}{health:<10}{pid!s:>8}{rss!s:>9}  {row['endpoint']}")
        if row.get("log"):
            print(f"{'':<42}log {row['log']}")
        if not row["healthy"]:
            print(f"{'':<42}{row['detail']}")


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    from conflux.stack import manager

    report = manager.up(settings, _progress, only=args.only)
    _progress(f"stack ready in {report.seconds:.1f}s (started: {', '.join(report.started) or 'none'}; "
              f"already running: {', '.join(report.already_running) or 'none'})")
    _print_status(manager.status(settings))
    if settings.run_platform:
        print(f"\nAPI:       http://127.0.0.1:{settings.edge_port}/v1   (key: {settings.home / 'dev-api-key'})")
        print(f"dashboard: http://127.0.0.1:{settings.edge_port}/dashboard#key=<that key>")
    print(f"\nlogs: {settings.logs_dir}   stop: make down   status: conflux status")
    return 0


def cmd_down(settings: Settings, args: argparse.Namespace) -> int:
    from conflux.stack import manager

    stopped = manager.down(settings, _progress, only=args.only)
    _progress(f"stopped: {', '.join(stopped) or 'nothing was running'}")
    return 0


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from conflux.stack import manager

    table = manager.status(settings)
    if args.json:
        print(json.dumps(table, indent=2))
    else:
        _print_status(table)
    return 0 if all(r["healthy"] for r in table.values()) else 1


def cmd_topics(settings: Settings, args: argparse.Namespace) -> int:
    from conflux.topics import apply_topics, load_catalogue

    catalogue = load_catalogue()
    if args.action == "list":
        for t in (*catalogue.topics, *catalogue.patterns):
            print(f"{t.name:<24} key={t.key:<16} schema={t.schema:<20} partitions={t.partitions:<3} "
                  f"retention_ms={t.retention_ms:<11} cleanup={t.cleanup_policy}")
        return 0
    from aiokafka.errors import KafkaError

    try:
        if args.action == "prune-replies":
            return _prune_replies(settings, args.grace_s)
        if args.action == "acls":
            from conflux.kafka_acls import apply_acls, load_grants

            created = asyncio.run(apply_acls(settings.kafka, load_grants()))
            print(json.dumps({"bindings": created}))
            return 0
        result = asyncio.run(apply_topics(settings.kafka, catalogue.topics))
    except KafkaError as exc:
        raise ConfluxError(f"Kafka at {settings.kafka_bootstrap}: {exc}") from None
    print(json.dumps(result.__dict__, indent=2))
    return 0


def _prune_replies(settings: Settings, grace_s: float) -> int:
    if not grace_s >= 0:
        raise ConfluxError(f"--grace-s is seconds, 0 or more, not {grace_s}")
    from conflux.redis_client import redis_client
    from conflux.reply_topics import prune

    async def run() -> dict[str, list[str]]:
        redis = redis_client(settings.redis_url, settings.redis_password)
        try:
            return (await prune(settings.kafka, redis, grace_s)).__dict__
        finally:
            await redis.aclose()

    print(json.dumps(asyncio.run(run()), indent=2))
    return 0


def cmd_schemas(settings: Settings, args: argparse.Namespace) -> int:
    from conflux.schemas import SchemaRegistry

    reg = SchemaRegistry()
    if args.action == "snapshot":
        for path in reg.snapshot():
            print(f"wrote {path}")
        return 0
    problems = [p for name in sorted(reg.current) for p in reg.check_evolution(name)]
    unfrozen = [n for n, s in reg.current.items() if s.version == 0]
    for p in problems:
        print(f"INCOMPATIBLE: {p}")
    for n in unfrozen:
        print(f"changed, not yet frozen: {n} (run `conflux schemas snapshot`)")
    for n, s in sorted(reg.current.items()):
        print(f"{n:<22} v{s.version or '?'}  fingerprint {s.fingerprint.hex()}")
    return 1 if problems else 0


class Refused(ConfluxError):
    """An operator's command that cannot be done as asked (the message says why)."""


def _with_store(settings: Settings, act: Callable[[Any], Awaitable[T]]) -> T:
    """Runs `act(ApiKeyStore)` against Redis; a refusal of the store's (unknown tenant, bad budget or policy)
    becomes Refused with its message."""
    from conflux.budget import BudgetError
    from conflux.redis_client import redis_client
    from conflux.taxonomy import PolicyError
    from conflux.tenants import ApiKeyStore, AuthError

    async def run() -> T:
        client = redis_client(settings.redis_url, settings.redis_password)
        try:
            return await act(ApiKeyStore(client))
        finally:
            await client.aclose()

    try:
        return asyncio.run(run())
    except (AuthError, BudgetError, PolicyError) as exc:
        raise Refused(str(exc)) from None


def _refusing(command: Callable[[Settings, argparse.Namespace], int]) -> Callable[[Settings, argparse.Namespace], int]:
    """Exit 2 with the reason, never a stack trace, when the command is refused."""
    def run(settings: Settings, args: argparse.Namespace) -> int:
        try:
            return command(settings, args)
        except Refused as exc:
            _progress(f"refused: {exc}")
            return 2
    return run


@_refusing
def cmd_keys(settings: Settings, args: argparse.Namespace) -> int:
    from conflux.tenants import Tenant

    async def act(store: Any) -> Any:
        if args.action == "create":
            budget = _budget(args.budget_usd, args.budget_tokens, args.budget_period)
            # An existing tenant keeps its plan and system prompt unless they are given.
            if not await store.tenant_exists(args.tenant) or args.plan or args.system_prompt is not None:
                await store.upsert_tenant(Tenant(args.tenant, args.plan or "free", args.system_prompt or ""))
            return await store.create_key(args.tenant, args.name, budget)
        if args.action == "list":
            return await store.list_keys(args.tenant)
        if not args.id:
            raise Refused(f"keys {args.action} needs --id (see `conflux keys list --tenant {args.tenant}`)")
        if args.action == "revoke":
            return await store.revoke_id(args.tenant, args.id)
        return await store.rotate(args.tenant, args.id)

    result = _with_store(settings, act)
    if args.action == "list":
        for k in result:
            print(json.dumps({"id": k.id, "name": k.name, "created": k.created}))
        return 0
    if args.action == "revoke":
        _progress(f"revoked {result.id} ({result.name}) of tenant {args.tenant}; it is refused from now on")
        return 0
    _progress(f"new key for tenant {args.tenant}" + (" (the old one is revoked)" if args.action == "rotate" else "")
              + "; it is shown only now, only its hash is stored:")
    print(result)
    return 0


def _budget(usd: float | None, tokens: int | None, period: str | None) -> Any:
    """The Budget the flags describe, or None when they name no limit."""
    from conflux.budget import Budget, BudgetError, usd_to_micros

    if usd is None and tokens is None:
        if period is not None:
            raise Refused("a budget period needs a limit: --budget-usd and/or --budget-tokens")
        return None
    try:
        return Budget(period or "month", None if usd is None else usd_to_micros(usd), tokens)
    except BudgetError as exc:
        raise Refused(str(exc)) from None


@_refusing
def cmd_tenants(settings: Settings, args: argparse.Namespace) -> int:
    if args.action == "set-budget":
        return _set_budget(settings, args)
    if args.action == "set-cache":
        return _set_cache(settings, args)
    if args.action == "set-tools":
        return _set_tools(settings, args)
    return _set_policy(settings, args)


def _set_tools(settings: Settings, args: argparse.Namespace) -> int:
    if args.fetch_allow is None and args.default_tools is None and not args.clear:
        raise Refused("nothing to set: --fetch-allow HOST,.DOMAIN,... (hosts the fetch_url tool may read), "
                      "--default-tools NAME,... (built-in tools a chat gets when it names none) or --clear")
    from streams.server_tools import TOOLS

    hosts = [] if args.clear else None if args.fetch_allow is None else args.fetch_allow.split(",")
    names = [] if args.clear else None if args.default_tools is None else args.default_tools.split(",")

    async def act(store: Any) -> tuple[tuple[str, ...] | None, tuple[str, ...] | None]:
        allowed = tools = None
        try:
            if names is not None:
                tools = await store.set_server_tools(args.tenant, names, frozenset(TOOLS))
        except ValueError as exc:
            raise Refused(f"--default-tools: {exc}") from None
        try:
            if hosts is not None:
                allowed = await store.set_fetch_allow(args.tenant, hosts)
        except ValueError as exc:
            raise Refused(f"--fetch-allow: {exc}") from None
        return allowed, tools

    allowed, tools = _with_store(settings, act)
    if allowed is not None:
        _progress(f"fetch_url for tenant {args.tenant}: " + (", ".join(allowed) if allowed else "no hosts"))
    if tools is not None:
        _progress(f"default server tools for tenant {args.tenant}: " + (", ".join(tools) if tools else "none"))
    return 0


def _set_cache(settings: Settings, args: argparse.Namespace) -> int:
    if args.cache_ttl is None and args.semantic_threshold is None and not args.clear:
        raise Refused("nothing to set: --cache-ttl SECONDS (0 turns the cache off), --semantic-threshold "
                      "SIMILARITY (0 turns the semantic cache off) or --clear (the defaults)")
    semantic = args.semantic_threshold
    if semantic is not None and not 0.0 <= semantic <= 1.0:
        raise Refused(f"--semantic-threshold is a cosine similarity from 0 (off) to 1, not {semantic}")
    if args.clear or args.cache_ttl is not None:
        ttl = None if args.clear else args.cache_ttl
        _with_store(settings, lambda store: store.set_cache_ttl(args.tenant, ttl))
        _progress(f"response cache of tenant {args.tenant}: " + ("the platform's default TTL" if ttl is None else
                                                                 "off" if ttl <= 0 else f"{ttl}s"))
    if args.clear or semantic is not None:
        _with_store(settings, lambda store: store.set_semantic_threshold(args.tenant, None if args.clear else semantic))
        _progress(f"semantic cache of tenant {args.tenant}: " + (
            f"the platform's default threshold ({settings.semantic_threshold})" if args.clear or semantic is None
            else "off" if semantic == 0 else f"similarity >= {semantic}"))
    return 0


def _set_budget(settings: Settings, args: argparse.Namespace) -> int:
    budget = None if args.clear else _budget(args.budget_usd, args.budget_tokens, args.budget_period)
    if budget is None and not args.clear:
        raise Refused("nothing to set: --budget-usd and/or --budget-tokens (or --clear)")
    _with_store(settings, lambda store: store.set_budget(args.tenant, budget, args.id))
    whose = f"key {args.id} of tenant {args.tenant}" if args.id else f"tenant {args.tenant}"
    _progress(f"budget of {whose}: " + ("none" if budget is None else budget.to_json()))
    return 0


def _set_policy(settings: Settings, args: argparse.Namespace) -> int:
    overrides = {cid: action for action in ("block", "flag", "allow")
                 for cid in (getattr(args, action) or "").split(",") if cid}
    if not overrides:
        raise Refused("nothing to set: name categories with --block, --flag or --allow (comma-separated)")
    stored = _with_store(settings, lambda store: store.set_policy(args.tenant, overrides))
    _progress(f"safety policy of tenant {args.tenant} (overrides of infra/safety_taxonomy.toml's defaults):")
    print(json.dumps(stored, sort_keys=True))
    return 0


def cmd_edge(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from edge.app import create_app

    timeout = args.timeout if args.timeout is not None else settings.inference_timeout_s + 5
    app = create_app(settings, instance_id=args.instance_id, chain_timeout_s=timeout)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from streams.app import run_worker

    run_worker(settings, args.worker_id, args.metrics_port)
    return 0


def cmd_ingest(settings: Settings, args: argparse.Namespace) -> int:
    from conflux.ingest import ingest_paths

    count = asyncio.run(ingest_paths(settings, args.paths, args.tenant, _progress))
    _progress(f"published {count} document(s) to documents.ingest for tenant {args.tenant}")
    return 0


def cmd_sink(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.sink import run_sink

    run_sink(settings, args.name, args.metrics_port)
    return 0


def cmd_export(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime, timedelta
    from pathlib import Path

    from conflux.clickhouse import clickhouse_client
    from consumers.export import QualityFilter, run_export

    if not 0.0 <= args.min_grounded <= 1.0:
        raise ConfluxError(f"--min-grounded is a share of an answer's sentences, 0 to 1; got {args.min_grounded}")

    def when(text: str | None, default: datetime) -> datetime:
        if not text:
            return default
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            raise ConfluxError(f"{text!r} is not an ISO date or time (e.g. 2026-11-01 or 2026-11-01T12:00)") from None
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    now = datetime.now(UTC)
    client = clickhouse_client(settings)
    try:
        report = run_export(client, Path(args.out), when(args.since, now - timedelta(days=30)),
                            when(args.until, now + timedelta(minutes=1)), args.tenant, _progress,
                            QualityFilter(keep_hallucinated=args.keep_hallucinated, min_grounded=args.min_grounded))
    finally:
        client.close()
    print(json.dumps(report, indent=2))
    return 0


def cmd_budgets(settings: Settings, args: argparse.Namespace) -> int:
    """Compares the spend Redis counted with the spend the event log holds, per scope; exit 1 on any drift."""
    import datetime as dt
    import re

    from conflux.budget import window
    from conflux.clickhouse import clickhouse_client
    from conflux.redis_client import redis_client
    from consumers.reconcile import reconcile

    win = args.window or window("day", dt.datetime.now(dt.UTC))
    if not re.fullmatch(r"d\d{8}|m\d{6}", win):
        _progress(f"refused: --window is d<YYYYMMDD> or m<YYYYMM> (UTC), not {win!r}")
        return 2

    async def act() -> Any:
        client = clickhouse_client(settings)
        r = redis_client(settings.redis_url, settings.redis_password)
        try:
            return await reconcile(client, r, win, args.tenant)
        finally:
            await r.aclose()
            client.close()

    drifts = asyncio.run(act())
    for d in drifts:
        print(json.dumps(d.record()))
    off = [d for d in drifts if not d.exact]
    _progress(f"{len(drifts)} scope(s) in window {win}: " + (f"{len(off)} with drift" if off else "no drift"))
    return 1 if off else 0


def cmd_article(settings: Settings, args: argparse.Namespace) -> int:
    import os

    from conflux.article_cli import ArticleError, run_article

    key = args.api_key or os.environ.get("CONFLUX_API_KEY", "")
    if not key:
        print("conflux article: error: an API key is needed: --api-key or CONFLUX_API_KEY "
              "(conflux keys create --tenant T prints one)", file=sys.stderr)
        return 2
    if (args.topic is None) == (args.follow is None):
        print("conflux article: error: give a TOPIC, or --follow RUN_ID", file=sys.stderr)
        return 2
    body: dict[str, Any] | None = None
    if args.topic is not None:
        body = {"topic": args.topic, "sections": args.heading or args.sections}
        if args.audience:
            body["audience"] = args.audience
        if args.model:
            body["model"] = args.model
    try:
        return run_article(args.url or f"http://127.0.0.1:{settings.edge_port}", key, body, args.follow,
                           sys.stdout, sys.stderr, as_json=args.json, idempotency_key=args.idempotency_key)
    except ArticleError as exc:
        print(f"conflux article: error: {exc}", file=sys.stderr)
        return 2


def cmd_demo(settings: Settings, args: argparse.Namespace) -> int:
    from conflux.demo import run_demo

    return asyncio.run(run_demo(settings, _progress))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="conflux", description="Conflux: AI conversations as Kafka events.")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("up", help="install what is missing and start the local stack (idempotent)")
    p.add_argument("--only", nargs="+", metavar="SERVICE", help="only these services")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("down", help="stop the local stack cleanly")
    p.add_argument("--only", nargs="+", metavar="SERVICE", help="only these services")
    p.set_defaults(func=cmd_down)
    p = sub.add_parser("status", help="health, pid and memory of each service (exit 1 if any is down)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("topics", help="the topic catalogue (infra/topics.toml): apply, list, prune-replies "
                       "(delete the reply topics of edges without a heartbeat for --grace-s), or acls (grant each "
                       "service's principal what infra/kafka/acls.toml lists; run as the admin principal)")
    p.add_argument("action", choices=["apply", "list", "prune-replies", "acls"])
    p.add_argument("--grace-s", type=float, default=GRACE_S,
                   help=f"prune-replies: seconds an edge must have been silent (default {GRACE_S:.0f}; 0: at once)")
    p.set_defaults(func=cmd_topics)
    p = sub.add_parser("schemas", help="event schema evolution: check against history, or freeze changes")
    p.add_argument("action", choices=["check", "snapshot"])
    p.set_defaults(func=cmd_schemas)
    p = sub.add_parser("keys", help="API keys: create (printed once, stored hashed), list, revoke or rotate "
                       "a tenant's keys")
    p.add_argument("action", choices=["create", "list", "revoke", "rotate"])
    p.add_argument("--tenant", required=True)
    p.add_argument("--plan", default=None, choices=["free", "pro", "enterprise"],
                   help="create: the tenant's plan (a new tenant: free; an existing one keeps its own)")
    p.add_argument("--name", default="default")
    p.add_argument("--system-prompt", default=None)
    p.add_argument("--id", help="revoke, rotate: the key's id, from `keys list`")
    _budget_flags(p, "create: the key's own budget")
    p.set_defaults(func=cmd_keys)
    p = sub.add_parser("tenants", help="tenant settings: set-policy (what each safety category does for a "
                       "tenant), set-budget (spend limits of the tenant, or of one key with --id), set-cache "
                       "(the response cache's TTL and the semantic cache's threshold, or off), set-tools (the "
                       "hosts the fetch_url server tool may read, the built-in tools a chat gets by default)")
    p.add_argument("action", choices=["set-policy", "set-budget", "set-cache", "set-tools"])
    p.add_argument("--tenant", required=True)
    for action in ("block", "flag", "allow"):
        p.add_argument(f"--{action}", default="", metavar="CATEGORIES",
                       help=f"set-policy: comma-separated taxonomy ids to {action} (infra/safety_taxonomy.toml)")
    p.add_argument("--id", help="set-budget: one key's budget (its id, from `keys list`) instead of the tenant's")
    p.add_argument("--clear", action="store_true",
                   help="set-budget: remove the budget; set-cache: the default TTL and threshold; "
                   "set-tools: no hosts and no default tools")
    p.add_argument("--fetch-allow", default=None, metavar="HOSTS",
                   help="set-tools: comma-separated host names fetch_url may read (.example.com: with subdomains)")
    p.add_argument("--default-tools", default=None, metavar="NAMES",
                   help="set-tools: comma-separated built-in tools a chat of the tenant gets when it names none "
                   "itself (\"\": none)")
    p.add_argument("--cache-ttl", type=int, default=None, help="set-cache: seconds a cached answer is kept (0: off)")
    p.add_argument("--semantic-threshold", type=float, default=None, metavar="SIMILARITY",
                   help="set-cache: cosine similarity at which a near-duplicate question is answered from the "
                   "cache (0: off)")
    _budget_flags(p, "set-budget")
    p.set_defaults(func=cmd_tenants)
    p = sub.add_parser("budgets", help="reconcile: the spend counted in Redis against the event log, per "
                       "tenant and key (exit 1 on drift)")
    p.add_argument("action", choices=["reconcile"])
    p.add_argument("--window", help="d<YYYYMMDD> or m<YYYYMM>, UTC (default: today)")
    p.add_argument("--tenant", help="only this tenant (default: all)")
    p.set_defaults(func=cmd_budgets)
    p = sub.add_parser("edge", help="run an OpenAI-compatible HTTP edge instance")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--instance-id", default=None, help="names this instance's reply topic (default: host-pid)")
    p.add_argument("--timeout", type=float, default=None,
                   help="seconds without a token before a 504 (default: CONFLUX_INFERENCE_TIMEOUT_S + 5)")
    p.set_defaults(func=cmd_edge)
    p = sub.add_parser("worker", help="run a worker of the conversation chain (Faust agents)")
    p.add_argument("--worker-id", default=None)
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics on 127.0.0.1 (0: off)")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("ingest", help="publish text and Markdown files to documents.ingest for retrieval")
    p.add_argument("paths", nargs="+", help="files or folders (.txt, .md, .markdown)")
    p.add_argument("--tenant", default="dev")
    p.set_defaults(func=cmd_ingest)
    p = sub.add_parser("sink", help="run the ClickHouse sink (every topic into the events table)")
    p.add_argument("--name", default="sink-1")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics on 127.0.0.1 (0: off)")
    p.set_defaults(func=cmd_sink)
    p = sub.add_parser("export", help="training data (SFT and preference pairs) from the event log")
    p.add_argument("--out", default=".conflux/export", help="output folder")
    p.add_argument("--since", help="ISO start (default: 30 days ago)")
    p.add_argument("--until", help="ISO end (default: now)")
    p.add_argument("--tenant", help="only this tenant (default: all)")
    p.add_argument("--min-grounded", type=float, default=0.0,
                   help="drop SFT answers given sources whose grounded score (quality.scores) is below this, 0..1")
    p.add_argument("--keep-hallucinated", action="store_true",
                   help="keep SFT answers the quality stage found hallucinated (dropped by default)")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("article", help="write an article with the article workflow on a running edge, a progress "
                       "bar per step on stderr, the article (Markdown, with its sources) on stdout")
    p.add_argument("topic", nargs="?", help="what the article is about")
    p.add_argument("--audience", default=None, help="who it is for (default: a general audience)")
    p.add_argument("--sections", type=int, default=4, help="how many sections the outline step plans (1 to 8)")
    p.add_argument("--heading", action="append", metavar="TEXT",
                   help="a section heading of your own (repeat it; replaces --sections and the model's outline)")
    p.add_argument("--model", default=None, help="the model id (default: the workflow file's first "
                   "that the plan allows: qwen2.5-coder-0.5b-instruct from pro, else smollm2-135m-instruct)")
    p.add_argument("--follow", metavar="RUN_ID", help="follow a run already started instead of starting one")
    p.add_argument("--idempotency-key", default=None, help="sent as Idempotency-Key: a retry returns the same run")
    p.add_argument("--url", default=None, help="the edge (default: http://127.0.0.1:CONFLUX_EDGE_PORT)")
    p.add_argument("--api-key", default=None, help="default: the CONFLUX_API_KEY environment variable")
    p.add_argument("--json", action="store_true", help="print the whole run as JSON instead of the article")
    p.set_defaults(func=cmd_article)
    p = sub.add_parser("demo", help="one event through every engine of the running stack")
    p.set_defaults(func=cmd_demo)
    return ap


def _budget_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--budget-usd", type=float, default=None, help=f"{what}: USD per period")
    p.add_argument("--budget-tokens", type=int, default=None, help=f"{what}: tokens per period")
    p.add_argument("--budget-period", choices=["day", "month"], default=None,
                   help=f"{what}: the UTC day or month the limits apply to (default: month)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        code: int = args.func(settings, args)
        return code
    except ConfluxError as exc:
        print(f"conflux {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"conflux {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
