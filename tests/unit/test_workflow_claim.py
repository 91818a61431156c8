"""A workflow step's claim (streams/workflow/runner.py) is held by a worker process: duplicates of one task taken
by two actors of the same process at once run the step once; a claim of a process that is gone (no heartbeat,
or a heartbeat carrying another pid after a restart) is taken over; one of a live process is waited for."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace
from typing import Any

from streams.once import Claim
from streams.workflow import runner

WHAT = "wf_1/edit"
KEY = f"conflux:wf:claim:{WHAT}"


class FakeRedis:
    """The claim script's semantics, atomic per call; each reply comes back after `delays[n]` loop turns, so
    a test can make the first caller resume last (as replies on a connection pool can)."""

    def __init__(self, delays: list[int] | None = None) -> None:
        self.data: dict[str, str] = {}
        self.delays = list(delays or [])

    async def eval(self, script: str, _n: int, key: str, *args: Any) -> str:
        if script == runner._CLAIM:
            me, _ttl, dead = args
            cur = self.data.get(key)
            result = cur if cur is not None and cur != dead else ""
            if result == "":
                self.data[key] = me
        else:  # _RELEASE
            result = ""
            if self.data.get(key) == args[0]:
                del self.data[key]
        for _ in range(self.delays.pop(0) if self.delays else 0):
            await asyncio.sleep(0)
        return result

    async def get(self, key: str) -> str | None:
        return self.data.get(key)


def _deps(redis: FakeRedis, worker_id: str = "worker-1") -> Any:
    return SimpleNamespace(worker_id=worker_id, redis=redis)


async def test_two_actors_of_one_process_taking_duplicate_tasks_run_the_step_once() -> None:
    redis = FakeRedis(delays=[5, 0, 0, 0])  # the winner's reply comes back after the loser's
    deps = _deps(redis)
    got = await asyncio.gather(runner._claim(deps, WHAT, 60), runner._claim(deps, WHAT, 60))
    assert {*got} == {Claim.MINE, Claim.BUSY}, got
    assert redis.data[KEY] == f"worker-1/{os.getpid()}"


async def test_a_claim_of_a_gone_process_is_taken_over_and_a_live_ones_is_waited_for() -> None:
    redis = FakeRedis()
    deps = _deps(redis)
    redis.data[KEY] = "worker-2/4242"  # worker-2 has no heartbeat: gone
    assert await runner._claim(deps, WHAT, 60) == Claim.MINE
    redis.data[KEY] = "worker-1/1"  # this worker id before a restart: the heartbeat now carries this pid
    redis.data["conflux:worker:worker-1:heartbeat"] = str(os.getpid())
    assert await runner._claim(deps, WHAT, 60) == Claim.MINE
    redis.data[KEY] = "worker-2/4242"
    redis.data["conflux:worker:worker-2:heartbeat"] = "4242"  # alive, running it
    assert await runner._claim(deps, WHAT, 60) == Claim.BUSY
    redis.data[KEY] = "done"
    assert await runner._claim(deps, WHAT, 60) == Claim.DONE
