"""Extra edge and worker processes for tests that run several instances or kill one."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from conflux.config import Settings
from conflux.stack.platform import redis_heartbeat


class Proc:
    """A Conflux process of its own session (process group), logging to .conflux/logs/<name>.log."""

    def __init__(self, settings: Settings, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.name = name
        self.argv = argv
        self.env = env or {}  # on top of this process's environment
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.settings.logs_dir / f"{self.name}.log"

    def start(self) -> Proc:
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen([sys.executable, "-m", "conflux.cli", *self.argv], stdout=log,
                                          stderr=log, start_new_session=True, env={**os.environ, **self.env})
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        assert self.popen is not None
        self.popen.wait(timeout=10)

    def signal(self, sig: signal.Signals) -> None:
        """SIGSTOP / SIGCONT to the whole process group: a stall, not a death."""
        os.killpg(self.pid, sig)

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill9()


def edge(settings: Settings, instance_id: str, port: int, env: dict[str, str] | None = None) -> Proc:
    return Proc(settings, f"test-{instance_id}", ["edge", "--port", str(port), "--instance-id", instance_id], env)


def worker(settings: Settings, worker_id: str, env: dict[str, str] | None = None) -> Proc:
    return Proc(settings, f"test-{worker_id}", ["worker", "--worker-id", worker_id], env)


def wait_edge(proc: Proc, port: int, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.popen is not None and proc.popen.poll() is None, f"{proc.name} exited; see {proc.log_path}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.3)
    raise AssertionError(f"{proc.name} not healthy after {timeout_s}s; see {proc.log_path}")


def wait_worker(proc: Proc, worker_id: str, timeout_s: float = 90) -> None:
    """Healthy once its agents beat in Redis with this process's pid (the check `conflux status` uses)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.popen is not None and proc.popen.poll() is None, f"{proc.name} exited; see {proc.log_path}"
        if redis_heartbeat(proc.settings.redis_url, f"conflux:worker:{worker_id}:heartbeat", proc.pid).ok:
            return
        time.sleep(0.3)
    raise AssertionError(f"{proc.name} not healthy after {timeout_s}s; see {proc.log_path}")
