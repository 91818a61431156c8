"""Runs workflow steps from `workflow.tasks`, one step instance per message, recording every attempt on
`workflow.steps` and resuming a run from the last step that succeeded.

Per task (run R, step S):
1. R ended (succeeded, failed, cancelled) or unknown: nothing to do.
2. S already succeeded (a replay: this worker or another died after the step, before committing its offset):
   S is not run again. Its announcement is repeated under the same event id (the sink keeps one) and the run
   advances, since the death may have come before the next steps were queued.
3. Otherwise S is claimed across workers (an atomic compare-and-set in Redis, held by a worker process: a
   claim whose process is gone is taken over by one of the workers that find it; one held by a live process,
   this one included, is waited for), tried (attempt N of the workflow's max_attempts, a death counting as
   one), and its output stored in Redis. Then its success is announced and the next steps are queued, side by
   side.
A step that fails is retried after a pause, as a new task; one that cannot succeed (refused by safety, over
budget, a prompt that cannot fit) or has used its attempts ends the run with an explicit error.

Fan-out: a per-item step's tasks are placed on the workflow.tasks partitions of different live workers (each
worker's heartbeat lists the partitions it holds, in Redis), so the sections are written side by side however
the consumer group assigned the partitions; without that view they are spread evenly over the topic. Fan-in:
the step after them is queued by whichever finishes last (Redis is the one place all see), or by both if they
finish together (the claim keeps it to one run).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from conflux.budget import Limit, renews_at
from conflux.errors import ConfluxError
from conflux.serde import new_envelope
from conflux.workflow_spec import Workflow, load_workflow
from conflux.workflow_store import RUN_TTL_S, RunState, WorkflowStore, end_record, stable_id
from streams.deps import Deps
from streams.once import Claim
from streams.workflow import steps
from streams.workflow.steps import StepFailed, StepInput

STAGE = "workflow_step"  # the agent's name and its metrics label
SOURCE = "workflow.tasks"
EVENT = "workflow_task"
CANCEL_POLL_S = 0.5
BUSY_POLL_S = 1.0
RETRY_PAUSE_S = (1.0, 4.0, 10.0)
PARTITIONS_KEY = "conflux:wf:partitions"  # worker id -> [when, the workflow.tasks partitions it holds]
PARTITIONS_FRESH_S = 10.0  # a worker's heartbeat TTL
PARTITIONS_FORGET_S = 3600.0
T = TypeVar("T")
log = logging.getLogger("conflux.workflow")


class RunEnded(ConfluxError):
    """The run was cancelled (or ended otherwise) while one of its steps ran."""


def workflow_of(deps: Deps, name: str) -> Workflow:
    if name not in deps.workflows:
        deps.workflows[name] = load_workflow(name)
    wf: Workflow = deps.workflows[name]
    return wf


def envelope(deps: Deps, run: RunState, event_id: str | None = None) -> dict[str, Any]:
    env = new_envelope(tenant_id=run.tenant_id, conversation_id=run.run_id, request_id=run.run_id,
                       producer=deps.worker_id)
    return {**env, "event_id": event_id} if event_id else env


async def handle(deps: Deps, task: dict[str, Any]) -> None:
    store = WorkflowStore(deps.redis)
    run_id, inst = task["run_id"], task["step"]
    run = await store.get(run_id)
    if run is None or run.status != "running":
        return
    wf = workflow_of(deps, run.workflow)
    # A step already done is announced again below: a crash may have come before its event reached the log.
    if inst not in run.done and not await _claim_and_run(deps, store, wf, run, inst):
        return
    run = await store.get(run_id)
    if run is None:
        return
    # The success is on record in Redis, so its event and the next steps' tasks go out side by side: one
    # broker round trip between steps instead of two. A crash between them replays this task (its offset
    # is not committed), which announces and advances again; both are idempotent.
    work = [_announce(deps, run, inst)]
    if run.status == "running":
        work.append(advance(deps, store, wf, run, inst))
    await asyncio.gather(*work)


# Takes a step's claim when it is free, or when it still holds the holder this worker found dead (compare and
# set: of several workers that find the same dead holder, one takes over). KEYS: claim. ARGV: me, ttl, dead.
_CLAIM = """
local cur = redis.call('GET', KEYS[1])
if cur == false or cur == ARGV[3] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return ''
end
return cur
"""


def claimant(deps: Deps) -> str:
    """Who holds a claim: this worker and this process's pid, which the worker's heartbeat carries. A claim left
    by an earlier process with the same worker id (a restart) is then told from this process's own."""
    return f"{deps.worker_id}/{os.getpid()}"


async def _alive(deps: Deps, holder: str) -> bool:
    """Whether the process holding a claim still runs: this process's own claims are live (one of its actors
    holds the step, and releases or completes it in a `finally`); another's while its worker's heartbeat carries
    that pid. Checking the process, not a set of running steps, matters: two actors of one process that take
    the same step's duplicate tasks at once would otherwise each find the other's fresh claim "not running"."""
    if holder == claimant(deps):
        return True
    worker_id, _, pid = holder.rpartition("/")
    beat = await deps.redis.get(f"conflux:worker:{worker_id}:heartbeat")
    return beat is not None and (beat.decode() if isinstance(beat, bytes) else str(beat)) == pid


async def _claim(deps: Deps, what: str, ttl_s: int) -> Claim:
    """MINE, DONE, or BUSY while a live process holds it. A holder whose process is gone (its worker's heartbeat
    stopped, or carries another pid after a restart) is dead: its claim is taken over atomically."""
    key = f"conflux:wf:claim:{what}"
    me, dead = claimant(deps), ""
    while True:
        holder = await deps.redis.eval(_CLAIM, 1, key, me, ttl_s, dead)
        holder = holder.decode() if isinstance(holder, bytes) else holder
        if holder == "":
            return Claim.MINE
        if holder == "done":
            return Claim.DONE
        if await _alive(deps, holder):
            return Claim.BUSY
        dead = holder


async def _claim_and_run(deps: Deps, store: WorkflowStore, wf: Workflow, run: RunState, inst: str) -> bool:
    """True when the step has succeeded (here, or meanwhile by the live worker that held it)."""
    what = f"{run.run_id}/{inst}"
    key = f"conflux:wf:claim:{what}"
    deadline = time.monotonic() + wf.step_timeout_s * 2
    ttl = RUN_TTL_S
    while (claim := await _claim(deps, what, ttl)) == Claim.BUSY:
        # A live worker runs it (its own message for it is not committed either): wait, so that if it dies
        # this replay is the one that resumes the run.
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(BUSY_POLL_S)
    if claim == Claim.DONE:
        return True
    ok = False
    try:
        ok = await _attempt(deps, store, wf, run, inst)
    finally:
        if ok:
            await deps.redis.set(key, "done", ex=ttl)
        else:  # free for a retry (a new task) or a replay; a death leaves it to be taken over
            await deps.redis.eval(_RELEASE, 1, key, claimant(deps))
    return ok


_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
"""


async def _attempt(deps: Deps, store: WorkflowStore, wf: Workflow, run: RunState, inst: str) -> bool:
    spec, item = wf.step(inst)
    attempt = await store.new_attempt(run.run_id, inst)
    previous = run.steps.get(inst) or {}
    if attempt > wf.max_attempts:
        await fail_run(deps, store, run, f"step {inst} did not complete in {wf.max_attempts} attempts"
                       + (f"; last error: {previous['error']}" if previous.get("error") else
                          " (the workers running it stopped)"))
        return False
    base = {"attempt": attempt, "worker": deps.worker_id, "started": time.time()}
    await _step_event(deps, run, inst, "started", attempt)
    await store.put_step(run.run_id, inst, {**base, "status": "running"})
    model = deps.models.get(run.input["model"])
    hold_id = f"wf:{run.run_id}:{inst}:{attempt}"
    limits = [Limit.of(r) for r in run.budgets]

    async def hold(micros: int, tokens: int) -> None:
        if (short := await deps.budgets.reserve(hold_id, limits, micros, tokens)) is not None:
            raise StepFailed(f"insufficient_quota: this step may cost up to ${micros / 1e6:.6f} and {tokens} "
                             f"tokens; the {short.scope.split(':')[0]}'s budget does not have that left (it "
                             f"renews at {renews_at(short.window).isoformat()})", retry=False)

    async def progress(tokens: int) -> None:
        await store.set_progress(run.run_id, inst, tokens)

    await store.set_progress(run.run_id, inst, 0)
    si = StepInput(wf, spec, item, run, model, envelope(deps, run), hold, progress)
    t0 = time.perf_counter()
    try:
        result = await _unless_ended(store, run.run_id, asyncio.wait_for(steps.run(deps, si), wf.step_timeout_s))
    except RunEnded:
        await deps.budgets.settle(hold_id, 0, 0)
        await store.put_step(run.run_id, inst, {**base, "status": "cancelled", "ended": time.time()})
        return False
    except (ConfluxError, TimeoutError) as exc:
        await deps.budgets.settle(hold_id, 0, 0)
        error = f"timed out after {wf.step_timeout_s:.0f}s" if isinstance(exc, TimeoutError) else str(exc)
        await _step_event(deps, run, inst, "failed", attempt, error=error,
                          latency_ms=(time.perf_counter() - t0) * 1000)
        await store.put_step(run.run_id, inst, {**base, "status": "failed", "ended": time.time(), "error": error})
        if getattr(exc, "retry", True) and attempt < wf.max_attempts:
            log.warning("workflow %s: step %s failed (attempt %d), retrying: %s", run.run_id, inst, attempt, error)
            await asyncio.sleep(RETRY_PAUSE_S[min(attempt, len(RETRY_PAUSE_S)) - 1])
            await enqueue(deps, run, wf, [inst])
        else:
            await fail_run(deps, store, run, f"step {inst} failed: {error}")
        return False
    for topic, record in result.events:
        await deps.publisher.publish(topic, record, key=run.run_id)
    if spec.id == wf.items_from:
        await store.set_items(run.run_id, len(result.output["sections"]))
    # Stored before it is announced: from here on no worker runs the step again.
    await store.put_step(run.run_id, inst, {
        **base, "status": "succeeded", "ended": time.time(), "output": result.output, "model": result.model,
        "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
        "cost_micros": result.cost_micros, "latency_ms": (time.perf_counter() - t0) * 1000})
    await deps.budgets.settle(hold_id, result.cost_micros, result.prompt_tokens + result.completion_tokens)
    return True  # announced by handle()


async def _unless_ended(store: WorkflowStore, run_id: str, work: Awaitable[T]) -> T:
    """`work`, cancelled as soon as the run stops running (a cancel from the API)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=CANCEL_POLL_S)
            if done:
                return task.result()
            if await store.status(run_id) != "running":
                raise RunEnded(f"run {run_id} ended while a step ran")
    finally:
        if not task.done():
            task.cancel()


async def _step_event(deps: Deps, run: RunState, inst: str, status: str, attempt: int, *,
                      record: dict[str, Any] | None = None, error: str | None = None, latency_ms: float = 0.0,
                      event_id: str | None = None) -> None:
    spec_id, _, item = inst.partition(".")
    rec = record or {}
    await deps.publisher.publish("workflow.steps", {
        "envelope": envelope(deps, run, event_id), "run_id": run.run_id, "workflow": run.workflow, "step": inst,
        "step_id": spec_id, "item": int(item) if item else None, "status": status, "attempt": attempt,
        "output": json.dumps(rec["output"]) if "output" in rec else None, "error": error,
        "model": rec.get("model"), "prompt_tokens": rec.get("prompt_tokens", 0),
        "completion_tokens": rec.get("completion_tokens", 0), "cost_micros": rec.get("cost_micros", 0),
        "latency_ms": rec.get("latency_ms", latency_ms)}, key=run.run_id)


async def _announce(deps: Deps, run: RunState, inst: str) -> None:
    """The step's success on workflow.steps, from its stored record, under an id of its own (repeatable)."""
    rec = run.steps.get(inst)
    if rec is None or rec.get("status") != "succeeded":
        return
    await _step_event(deps, run, inst, "succeeded", rec["attempt"], record=rec,
                      event_id=stable_id(run.run_id, inst, "succeeded"))


def _successors(wf: Workflow, inst: str, ready: list[str]) -> list[str]:
    """Of the ready instances, those that waited on `inst` (what its success may have unblocked)."""
    spec, item = wf.step(inst)
    out = []
    for r in ready:
        rspec, ritem = wf.step(r)
        if spec.id in rspec.after and (item is None or ritem is None or item == ritem):
            out.append(r)
    return out


async def advance(deps: Deps, store: WorkflowStore, wf: Workflow, run: RunState, inst: str | None) -> None:
    """Queues what `inst`'s success unblocked (with None: the run's first steps); ends the run after its last."""
    if inst is None:
        await enqueue(deps, run, wf, [r for r in wf.roots() if r not in run.done])
        return
    if wf.last.id in run.done:
        await complete(deps, store, wf, run)
        return
    await enqueue(deps, run, wf, _successors(wf, inst, wf.ready_after(run.done, run.items)))


async def publish_partitions(deps: Deps, partitions: list[int]) -> None:
    """This worker's share of workflow.tasks, refreshed with its heartbeat (streams/app.py)."""
    await deps.redis.hset(PARTITIONS_KEY, deps.worker_id, json.dumps([time.time(), partitions]))


async def _placement(deps: Deps, items: int, parts: int) -> list[int]:
    """A partition per item, so that consecutive items go to different live workers (the fan-out runs side by
    side whatever the consumer group's assignment). Without a fresh view of the workers: spread evenly."""
    raw = await deps.redis.hgetall(PARTITIONS_KEY)
    now = time.time()
    held: list[list[int]] = []
    for wid, value in sorted(raw.items()):
        seen, partitions = json.loads(value)
        if now - seen < PARTITIONS_FRESH_S and partitions:
            held.append(partitions)
        elif now - seen > PARTITIONS_FORGET_S:
            await deps.redis.hdel(PARTITIONS_KEY, wid)  # a worker long gone
    if not held:
        return [(i * parts) // items for i in range(items)]
    return [held[i % len(held)][(i // len(held)) % len(held[i % len(held)])] for i in range(items)]


async def enqueue(deps: Deps, run: RunState, wf: Workflow, instances: list[str]) -> None:
    parts = deps.catalogue.get(SOURCE).partitions
    per_item = run.items and any(wf.step(inst)[1] is not None for inst in instances)
    placement = await _placement(deps, run.items, parts) if per_item and run.items else []

    def partition(inst: str) -> int | None:
        _, item = wf.step(inst)
        return placement[item] if item is not None and placement else None  # None: by key

    await asyncio.gather(*(deps.publisher.publish(SOURCE, {
        "envelope": envelope(deps, run), "run_id": run.run_id, "workflow": run.workflow, "step": inst},
        key=f"{run.run_id}/{inst}", partition=partition(inst)) for inst in instances))


def result_of(wf: Workflow, run: RunState) -> dict[str, Any]:
    """The article (the last step's text), its sections and the passages each section was given to cite."""
    heads = steps.sections_of(run, wf) if wf.items_from in run.done else []
    citations = [{"section": i, "n": n, "document_id": p["document_id"], "chunk_id": p["chunk_id"],
                  "source": p.get("source"), "text": p["text"][:300]}
                 for i in range(len(heads)) for n, p in enumerate(steps.passages_of(run, wf, i), 1)]
    return {"article": run.steps[wf.last.id]["output"]["text"], "sections": heads, "citations": citations}


async def complete(deps: Deps, store: WorkflowStore, wf: Workflow, run: RunState) -> None:
    await store.finish(run.run_id, "succeeded", result=json.dumps(result_of(wf, run)))
    await announce_end(deps, store, run.run_id)


async def fail_run(deps: Deps, store: WorkflowStore, run: RunState, error: str) -> None:
    log.warning("workflow %s failed: %s", run.run_id, error)
    await store.finish(run.run_id, "failed", error=error)
    await announce_end(deps, store, run.run_id)


async def announce_end(deps: Deps, store: WorkflowStore, run_id: str) -> None:
    """The run's end on workflow.runs, as stored (whoever ended it), under the run's one end id."""
    run = await store.get(run_id)
    if run is None or run.status == "running":
        return
    await deps.publisher.publish("workflow.runs", end_record(run, envelope(deps, run, stable_id(run_id, "end"))),
                                 key=run_id)

