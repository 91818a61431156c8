"""kill -9 the worker running an article's step, once during a fan-out section step and once during the edit
step: the run resumes on another worker from the last step that succeeded, no step that succeeded runs again,
nothing is lost, and the caller sees one result. Checked from the topics (workflow.steps and workflow.runs, as
the sink stored them), not from the run's own state."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import defaultdict
from typing import Any

import httpx
import redis.asyncio as aioredis

from conflux.clickhouse import clickhouse_client
from conflux.config import Settings
from conflux.stack import manager
from tests import procs
from tests.integration.helpers import new_tenant_key

SECTIONS = ["Alpha", "Beta", "Gamma", "Delta"]  # given: the outline needs no model call
STEPS = ["outline", *(f"research.{i}" for i in range(4)), *(f"write.{i}" for i in range(4)), "edit"]


async def _running(http: httpx.AsyncClient, run_url: str, prefix: str, timeout_s: float = 120) -> dict[str, Any]:
    """The first step instance named `prefix...` seen running (with the worker that runs it)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = (await http.get(run_url)).json()
        assert run["status"] == "running", run
        for s in run["steps"]:
            if s["step"].startswith(prefix) and s["status"] == "running":
                return dict(s)
        await asyncio.sleep(0.2)
    raise AssertionError(f"no {prefix} step ran within {timeout_s:.0f}s")


async def _kill(r: aioredis.Redis, worker_id: str) -> None:
    raw = await r.get(f"conflux:worker:{worker_id}:heartbeat")
    assert raw is not None, f"{worker_id} has no heartbeat"
    pid = int(raw)
    os.kill(pid, signal.SIGKILL)  # the stack's worker-1 too: the session's `conflux up` brings it back after


def _topic_rows(settings: Settings, topic: str, run_id: str) -> list[tuple[Any, ...]]:
    client = clickhouse_client(settings)
    try:
        return list(client.query(
            "SELECT DISTINCT event_id, JSONExtractString(body, 'step'), JSONExtractString(body, 'status'), "
            "JSONExtractInt(body, 'attempt'), producer, event_time FROM events "
            "WHERE topic = {t:String} AND request_id = {r:String} ORDER BY event_time",
            parameters={"t": topic, "r": run_id}).result_rows)
    finally:
        client.close()


async def test_an_article_survives_kill_9_during_a_section_and_during_the_edit(stack: Settings) -> None:
    extra = [procs.worker(stack, f"worker-wf-{i}") for i in (2, 3, 4)]
    r = aioredis.Redis.from_url(stack.redis_url)
    killed: list[tuple[str, str]] = []  # (step, worker)
    try:
        extra[0].start()
        procs.wait_worker(extra[0], "worker-wf-2")
        _, key = await new_tenant_key(stack, "pro")
        headers = {"Authorization": f"Bearer {key}"}
        base = f"http://127.0.0.1:{stack.edge_port}/v1"
        async with httpx.AsyncClient(timeout=30, headers=headers) as http:
            # echo-paced: a section streams its 160 pieces in about 8 s, the edit its 720 in about 36 s.
            created = await http.post(f"{base}/workflows/article", json={
                "topic": "durable workflows on an event log", "sections": SECTIONS, "model": "echo-paced"})
            assert created.status_code == 202, created.text
            run_url = f"{base}/workflows/{created.json()['id']}"
            for prefix, spare in (("write.", extra[1]), ("edit", extra[2])):
                running = await _running(http, run_url, prefix)
                await asyncio.sleep(2.0)  # well inside the step
                await _kill(r, running["worker"])
                killed.append((running["step"], running["worker"]))
                spare.start()  # a worker to resume on, whichever was killed
                procs.wait_worker(spare, spare.name.removeprefix("test-"))
            deadline = time.monotonic() + 240
            while (run := (await http.get(run_url)).json())["status"] == "running":
                assert time.monotonic() < deadline, run
                await asyncio.sleep(1.0)
    finally:
        for p in extra:
            p.stop()
        await r.aclose()
        await asyncio.to_thread(manager.up, stack, lambda _: None)  # the stack's own worker, if it was the one killed
    assert run["status"] == "succeeded", run
    assert run["article"] and run["sections"] == SECTIONS

    run_id = run["id"]
    for _ in range(60):  # the sink's batches reach ClickHouse
        steps = _topic_rows(stack, "workflow.steps", run_id)
        ends = _topic_rows(stack, "workflow.runs", run_id)
        if len({s[1] for s in steps if s[2] == "succeeded"}) == len(STEPS) and any(e[2] != "requested" for e in ends):
            break
        await asyncio.sleep(1.0)
    succeeded: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    started: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for row in steps:
        {"succeeded": succeeded, "started": started}.get(row[2], defaultdict(list))[row[1]].append(row)
    # Nothing lost, nothing twice: every step succeeded, under one event each.
    assert sorted(succeeded) == sorted(STEPS), sorted(succeeded)
    assert all(len(v) == 1 for v in succeeded.values()), {k: len(v) for k, v in succeeded.items() if len(v) > 1}
    # The caller sees one result: one end of the run on workflow.runs.
    assert [e[2] for e in ends if e[2] != "requested"] == ["succeeded"], ends
    killed_workers = {w for _, w in killed}
    for step, worker in killed:
        # The killed attempt started on the killed worker; the run resumed elsewhere from there (on any other
        # worker: the one killed later, during the edit, may well be the one that took this step over).
        assert started[step][0][4] == worker, started[step]
        assert succeeded[step][0][4] != worker and succeeded[step][0][3] >= 2, (worker, succeeded[step])
    for step, attempts in started.items():
        # No step that had succeeded ran again: every start came before the step's one success, and a step
        # started more than once only because a killed worker was running it.
        assert all(a[5] <= succeeded[step][0][5] for a in attempts), (step, attempts, succeeded[step])
        if len(attempts) > 1:
            assert any(a[4] in killed_workers for a in attempts[:-1]), (step, attempts)
    print(f"workflow kill: killed {killed}; resumed and succeeded; {len(steps)} step events, 0 lost, 0 twice")
