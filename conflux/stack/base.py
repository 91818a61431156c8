"""What a local service is: how to install it, how to start it as its own process, how to probe it.

Each service runs detached (its own session), logs to .conflux/logs/<name>.log and records its pid in
.conflux/run/<name>.pid, so `conflux down` and `conflux status` work from any later shell.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from conflux.config import Settings
from conflux.errors import ServiceError
from conflux.stack.supervise import group_members

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class LaunchSpec:
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    # Restarted when it crashes (conflux.stack.supervise), as compose and Kubernetes restart it in production.
    supervised: bool = False


class Service(ABC):
    """One local engine. Subclasses stay small: install, launch spec, health probe."""

    name: str = ""
    start_timeout_s: float = 60.0
    stop_timeout_s: float = 20.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @property
    def pid_file(self) -> Path:
        return self.settings.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.settings.logs_dir / f"{self.name}.log"

    @abstractmethod
    def endpoint(self) -> str:
        """Where clients reach it, for humans."""

    def install(self, progress: Progress) -> None:  # noqa: B027 - optional hook, most services need none
        """Obtain whatever is missing (binaries, jars). Must be quick when nothing is missing."""

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Write configs, format storage: anything needed right before each start."""

    @abstractmethod
    def launch(self) -> LaunchSpec:
        """The command line of the service process."""

    @abstractmethod
    def health(self) -> Health:
        """A fast probe (a couple of seconds at most) that the service answers requests."""

    # --- process management, shared by every service ---

    def pid(self) -> int | None:
        """The pid of the running service, or None (stale pid files are removed)."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not _alive(pid):
            self.pid_file.unlink(missing_ok=True)
            return None
        return pid

    def spawn(self) -> int:
        spec = self.launch()
        argv = spec.argv
        if spec.supervised:
            argv = [sys.executable, "-m", "conflux.stack.supervise", "--name", self.name, "--", *argv]
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        self.settings.run_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **spec.env}
        with self.log_file.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(spec.argv)}"
                      f"{' (supervised: restarted after a crash)' if spec.supervised else ''}\n".encode())
            log.flush()
            try:
                proc = subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=env, cwd=spec.cwd, start_new_session=True,
                )
            except OSError as exc:
                raise ServiceError(f"{self.name}: cannot start {spec.argv[0]}: {exc}") from exc
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc.pid

    def wait_healthy(self, timeout_s: float | None = None) -> Health:
        deadline = time.monotonic() + (timeout_s or self.start_timeout_s)
        last = Health(False, "not probed")
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise ServiceError(f"{self.name} exited during start; see {self.log_file}:\n{tail(self.log_file)}")
            last = self.health()
            if last.ok:
                return last
            time.sleep(0.25)
        raise ServiceError(f"{self.name} not healthy after {timeout_s or self.start_timeout_s:.0f}s "
                           f"({last.detail}); see {self.log_file}:\n{tail(self.log_file)}")

    def stop(self) -> str | None:
        """SIGTERM, then SIGKILL after stop_timeout_s. None if nothing was running, else how it stopped."""
        pid = self.pid()
        if pid is None:
            return None
        t0 = time.monotonic()
        _signal_group(pid, signal.SIGTERM)
        while time.monotonic() - t0 < self.stop_timeout_s and _alive(pid):
            time.sleep(0.1)
        if not _alive(pid):
            how = f"stopped in {time.monotonic() - t0:.1f}s"
            # Whatever of its group outlived the leader would run on unsupervised (a Triton stub that caught
            # SIGTERM and hung was seen doing so); nothing of a stopped service may stay behind.
            _signal_group(pid, signal.SIGKILL)
        else:
            # Said out loud: a service that needs SIGKILL did not shut down cleanly, and its log says why.
            how = f"KILLED: still running {self.stop_timeout_s:.0f}s after SIGTERM (see {self.log_file})"
            _signal_group(pid, signal.SIGKILL)
            while _alive(pid):
                time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)
        return how

    def kill(self) -> None:
        """SIGKILL without warning: what a crash looks like (used by the durability tests)."""
        pid = self.pid()
        if pid is None:
            return
        _signal_group(pid, signal.SIGKILL)
        while _alive(pid):
            time.sleep(0.05)
        self.pid_file.unlink(missing_ok=True)

    def rss_mb(self) -> float | None:
        """Resident memory of the service's whole process group (Triton runs one stub per model)."""
        pid = self.pid()
        if pid is None:
            return None
        total_kb = 0
        for member in group_members(pid):
            try:
                for line in Path(f"/proc/{member}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
            except (OSError, ValueError):
                continue
        return round(total_kb / 1024, 1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)  # the service leads its own session, so this reaches its children too
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def http_probe(url: str, timeout_s: float = 2.0) -> Health:
    """Healthy when the URL answers 200 (optionally with an expected body)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as r:
            return Health(r.status == 200, f"HTTP {r.status}")
    except (urllib.error.URLError, OSError) as exc:
        return Health(False, str(exc))


def apt_install(packages: list[str], progress: Progress, log: Path) -> None:
    """Installs Debian packages when running as root with apt-get; otherwise says what to install."""
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise ServiceError(f"missing {', '.join(packages)}; install them: apt-get install {' '.join(packages)}")
    run_step(["apt-get", "update", "-qq"], "apt-get update", progress, log=log)
    run_step(["apt-get", "install", "-y", "-qq", *packages], f"installing {' '.join(packages)} (Debian)",
             progress, env={"DEBIAN_FRONTEND": "noninteractive"}, log=log)


def run_step(argv: list[str], what: str, progress: Progress, env: dict[str, str] | None = None,
             cwd: Path | None = None, log: Path | None = None) -> None:
    """Runs an install step, teeing output to a log; raises ServiceError with the tail on failure."""
    progress(f"{what} ...")
    t0 = time.monotonic()
    log = log or Path(os.devnull)
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        try:
            rc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, cwd=cwd, check=False).returncode
        except OSError as exc:
            raise ServiceError(f"{what} failed: cannot run {argv[0]}: {exc}") from exc
    if rc != 0:
        raise ServiceError(f"{what} failed (exit {rc}); see {log}:\n{tail(log)}")
    progress(f"{what}: done in {time.monotonic() - t0:.0f}s")
