"""Starts workflow runs: a `requested` event on workflow.runs (the edge's, after it stored the run) queues the
run's first steps on workflow.tasks. A replay queues them again; the step runner keeps each step to one run."""

from __future__ import annotations

from typing import Any

from conflux.workflow_store import WorkflowStore
from streams.deps import Deps
from streams.workflow.runner import advance, workflow_of

STAGE = "workflow_start"  # the agent's name and its metrics label
SOURCE = "workflow.runs"
EVENT = "workflow_run"


async def handle(deps: Deps, event: dict[str, Any]) -> None:
    if event["status"] != "requested":
        return  # the end of a run: a record for others
    store = WorkflowStore(deps.redis)
    run = await store.get(event["run_id"])
    if run is None or run.status != "running" or run.steps:
        return  # expired, ended (cancelled before it started), or started already
    await advance(deps, store, workflow_of(deps, run.workflow), run, None)
