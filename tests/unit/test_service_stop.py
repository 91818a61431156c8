"""`conflux down` says how each service stopped: a service that needs SIGKILL is reported, not hidden."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from conflux.config import Settings
from conflux.stack.base import Health, LaunchSpec, Service

MARK = "conflux-stop-test"


class Sleeper(Service):
    name = "sleeper"
    stop_timeout_s = 1.0

    def __init__(self, settings: Settings, ignore_term: bool) -> None:
        super().__init__(settings)
        self.ignore_term = ignore_term

    def endpoint(self) -> str:
        return "-"

    def launch(self) -> LaunchSpec:
        ignore = "signal.signal(signal.SIGTERM, signal.SIG_IGN); " if self.ignore_term else ""
        code = f"import signal, time; {ignore}print('handler' + ' set', flush=True); time.sleep(30)  # {MARK}"
        return LaunchSpec([sys.executable, "-c", code])

    def health(self) -> Health:
        return Health(True)


def _stop(tmp_path: Path, ignore_term: bool) -> str | None:
    svc = Sleeper(Settings.from_env({"CONFLUX_HOME": str(tmp_path)}), ignore_term)
    svc.spawn()
    deadline = time.monotonic() + 10
    while "handler set" not in svc.log_file.read_text() and time.monotonic() < deadline:  # (not the echoed argv)
        time.sleep(0.02)
    how = svc.stop()
    assert svc.pid() is None and not svc.pid_file.exists()
    return how


def test_a_clean_stop_says_how_long_it_took(tmp_path: Path) -> None:
    how = _stop(tmp_path, ignore_term=False)
    assert how is not None and how.startswith("stopped in"), how


def test_a_service_ignoring_sigterm_is_killed_and_says_so(tmp_path: Path) -> None:
    how = _stop(tmp_path, ignore_term=True)
    assert how is not None and how.startswith("KILLED") and "sleeper.log" in how, how
    assert subprocess.run(["pgrep", "-f", MARK], capture_output=True).returncode == 1  # nothing left behind


def test_nothing_running_is_none(tmp_path: Path) -> None:
    assert Sleeper(Settings.from_env({"CONFLUX_HOME": str(tmp_path)}), False).stop() is None
