"""Workflow runs' state in Redis: what the edge reads for GET /v1/workflows and what a worker that takes a run
over reads to resume it. workflow.runs and workflow.steps are the record; this is the state that must outlive
a worker (DESIGN.md §1), written by the worker that holds a step's claim.

Keys (all expire RUN_TTL_S after the run's last change):
  conflux:wf:<run>            hash: tenant, workflow, status, input, key_id, created, ended, items, result, error
  conflux:wf:<run>:steps      hash: step instance -> JSON (status, attempts, worker, started, ended, output...)
  conflux:wf:<run>:attempts   hash: step instance -> tries started
  conflux:wf:<run>:progress   hash: step instance -> tokens its running attempt has written so far
  conflux:wf:tenant:<tenant>  sorted set: the tenant's runs by creation time (the newest MAX_LISTED kept)
  conflux:wf:idem:<tenant>:<Idempotency-Key>  "<run> <body digest>"
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

RUN_TTL_S = 7 * 24 * 3600
MAX_LISTED = 1000
TERMINAL = ("succeeded", "failed", "cancelled")
EVENT_IDS = uuid.UUID("5b0f3f7e-64a4-4c1e-9f43-0c0f1e1d2a77")  # namespace of the stable event ids

# Ends a run once: only a running run changes status. KEYS: run hash. ARGV: status, ended, field/value pairs.
_FINISH = """
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'ended', ARGV[2])
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""


def _s(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


@dataclass(frozen=True)
class RunState:
    run_id: str
    tenant_id: str
    workflow: str
    status: str
    input: dict[str, Any]
    key_id: str
    created: float
    ended: float | None
    items: int | None
    result: dict[str, Any] | None
    error: str | None
    steps: dict[str, dict[str, Any]]
    budgets: list[dict[str, Any]]  # the spend limits (conflux.budget.Limit records) every step's hold is made against
    progress: dict[str, int] = field(default_factory=dict)  # tokens written so far by running generate steps

    @property
    def done(self) -> set[str]:
        return {k for k, v in self.steps.items() if v.get("status") == "succeeded"}

    @property
    def cost_micros(self) -> int:
        return sum(int(v.get("cost_micros") or 0) for v in self.steps.values())


class WorkflowStore:
    def __init__(self, redis: Any) -> None:
        self._r = redis

    @staticmethod
    def key(run_id: str) -> str:
        return f"conflux:wf:{run_id}"

    async def create(self, run_id: str, tenant_id: str, workflow: str, inputs: dict[str, Any], key_id: str,
                     budgets: list[dict[str, Any]], idempotency: tuple[str, str] | None = None) -> tuple[str, bool]:
        """(run id, created). With an Idempotency-Key (key, digest of the body), a repeat returns the first
        run's id and False; ValueError when the key was used with another body."""
        if idempotency is not None:
            ikey = f"conflux:wf:idem:{tenant_id}:{idempotency[0]}"
            if not await self._r.set(ikey, f"{run_id} {idempotency[1]}", nx=True, ex=RUN_TTL_S):
                first, _, digest = _s(await self._r.get(ikey) or b"").partition(" ")
                if digest != idempotency[1]:
                    raise ValueError("this Idempotency-Key was used with a different request body")
                return first, False
        now = time.time()
        k = self.key(run_id)
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(k, mapping={"tenant": tenant_id, "workflow": workflow, "status": "running",
                                  "input": json.dumps(inputs), "key_id": key_id, "created": now,
                                  "budgets": json.dumps(budgets)})
            pipe.expire(k, RUN_TTL_S)
            runs = f"conflux:wf:tenant:{tenant_id}"
            pipe.zadd(runs, {run_id: now})
            pipe.zremrangebyrank(runs, 0, -MAX_LISTED - 1)
            pipe.expire(runs, RUN_TTL_S)
            await pipe.execute()
        return run_id, True

    async def get(self, run_id: str) -> RunState | None:
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.hgetall(self.key(run_id))
            pipe.hgetall(f"{self.key(run_id)}:steps")
            pipe.hgetall(f"{self.key(run_id)}:progress")
            run, steps, progress = await pipe.execute()
        if not run:
            return None
        f = {_s(k): _s(v) for k, v in run.items()}
        return RunState(run_id=run_id, tenant_id=f["tenant"], workflow=f["workflow"], status=f["status"],
                        input=json.loads(f["input"]), key_id=f.get("key_id", ""), created=float(f["created"]),
                        ended=float(f["ended"]) if f.get("ended") else None,
                        items=int(f["items"]) if f.get("items") else None,
                        result=json.loads(f["result"]) if f.get("result") else None, error=f.get("error") or None,
                        steps={_s(k): json.loads(v) for k, v in steps.items()},
                        budgets=json.loads(f.get("budgets") or "[]"),
                        progress={_s(k): int(v) for k, v in progress.items()})

    async def status(self, run_id: str) -> str | None:
        raw = await self._r.hget(self.key(run_id), "status")
        return _s(raw) if raw is not None else None

    async def runs_of(self, tenant_id: str, limit: int) -> list[str]:
        return [_s(r) for r in await self._r.zrevrange(f"conflux:wf:tenant:{tenant_id}", 0, limit - 1)]

    async def new_attempt(self, run_id: str, step: str) -> int:
        k = f"{self.key(run_id)}:attempts"
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hincrby(k, step, 1)
            pipe.expire(k, RUN_TTL_S)
            attempt, _ = await pipe.execute()
        return int(attempt)

    async def put_step(self, run_id: str, step: str, record: dict[str, Any]) -> None:
        k = f"{self.key(run_id)}:steps"
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(k, step, json.dumps(record))
            pipe.expire(k, RUN_TTL_S)
            await pipe.execute()

    async def set_progress(self, run_id: str, step: str, tokens: int) -> None:
        k = f"{self.key(run_id)}:progress"
        async with self._r.pipeline(transaction=True) as pipe:
            pipe.hset(k, step, tokens)
            pipe.expire(k, RUN_TTL_S)
            await pipe.execute()

    async def step(self, run_id: str, step: str) -> dict[str, Any] | None:
        raw = await self._r.hget(f"{self.key(run_id)}:steps", step)
        return json.loads(raw) if raw else None

    async def set_items(self, run_id: str, items: int) -> None:
        await self._r.hset(self.key(run_id), "items", items)

    async def finish(self, run_id: str, status: str, **fields: str) -> bool:
        """Ends a running run with `status` (and e.g. result=..., error=...); False when it had ended already
        (a cancel that came first, or another worker's end)."""
        assert status in TERMINAL
        args: list[Any] = [status, time.time()]
        for name, value in fields.items():
            args += [name, value]
        return bool(await self._r.eval(_FINISH, 1, self.key(run_id), *args))


def stable_id(*parts: str) -> str:
    """An event id that a repeated announcement (after a crash) shares with the first: the sink keeps one."""
    return str(uuid.uuid5(EVENT_IDS, "/".join(parts)))


def end_record(run: RunState, env: dict[str, Any]) -> dict[str, Any]:
    """A run's end on workflow.runs, as stored."""
    return {"envelope": env, "run_id": run.run_id, "workflow": run.workflow, "status": run.status,
            "input": json.dumps(run.input), "key_id": run.key_id,
            "result": json.dumps(run.result) if run.result else None, "error": run.error,
            "cost_micros": run.cost_micros,
            "duration_ms": ((run.ended or time.time()) - run.created) * 1000}
