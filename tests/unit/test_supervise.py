"""The local stack's supervisor restarts a service that crashes, and only one that crashes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conflux.stack.supervise import Supervisor, describe, group_members, is_crash


def NONE() -> int:  # in-process runs share pytest's process group: never kill what is in it
    return 0


def _child(tmp_path: Path, body: str) -> list[str]:
    """A child that counts its runs in a file, then does `body` (run = how many times it has started)."""
    count = tmp_path / "runs"
    code = (f"import os, signal, time, pathlib; p = pathlib.Path({str(count)!r}); "
            f"run = int(p.read_text()) + 1 if p.exists() else 1; p.write_text(str(run)); {body}")
    return [sys.executable, "-c", code]


def _runs(tmp_path: Path) -> int:
    return int((tmp_path / "runs").read_text())


def test_signals_that_are_crashes() -> None:
    assert is_crash(-signal.SIGSEGV) and is_crash(-signal.SIGABRT) and is_crash(-signal.SIGKILL)
    assert not is_crash(-signal.SIGTERM) and not is_crash(-signal.SIGINT) and not is_crash(0)
    assert not is_crash(1)  # a refusal to run (bad config): restarting cannot mend it
    assert describe(-signal.SIGSEGV) == "killed by SIGSEGV" and describe(3) == "exited with code 3"


def test_a_crashed_child_is_restarted_and_a_clean_exit_ends_it(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    argv = _child(tmp_path, "os.kill(os.getpid(), signal.SIGSEGV) if run < 3 else None")
    assert Supervisor("svc", argv, clean_up=NONE).run() == 0
    assert _runs(tmp_path) == 3
    out = capsys.readouterr().out
    assert out.count("killed by SIGSEGV; restarting") == 2


def test_a_refusal_to_run_is_not_restarted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert Supervisor("svc", _child(tmp_path, "raise SystemExit(2)"), clean_up=NONE).run() == 2
    assert _runs(tmp_path) == 1
    assert "exited with code 2; not restarting" in capsys.readouterr().out


def test_restarts_are_capped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _child(tmp_path, "os.kill(os.getpid(), signal.SIGABRT)")
    assert Supervisor("svc", argv, max_restarts=2, clean_up=NONE).run() == 128 + signal.SIGABRT
    assert _runs(tmp_path) == 3  # the first start and two restarts
    assert "giving up" in capsys.readouterr().out


def test_a_missing_command_is_said_plainly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert Supervisor("svc", [str(tmp_path / "no-such-binary")], clean_up=NONE).run() == 127
    assert "cannot start" in capsys.readouterr().out


def _supervise(tmp_path: Path, argv: list[str], marker: str) -> tuple[subprocess.Popen[bytes], Path]:
    """The supervisor as the stack runs it: its own session, output to a log; returns once `marker` is logged."""
    log = tmp_path / "log"
    with log.open("wb") as out:
        sup = subprocess.Popen([sys.executable, "-m", "conflux.stack.supervise", "--name", "svc", "--", *argv],
                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 20
    while marker not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker in log.read_text(), log.read_text()
    return sup, log


def test_what_a_crashed_child_left_behind_is_killed_before_the_restart(tmp_path: Path) -> None:
    stray = tmp_path / "stray.pid"
    argv = _child(tmp_path, "import subprocess, sys; "
                            f"(pathlib.Path({str(stray)!r}).write_text(str(subprocess.Popen([sys.executable, '-c', "
                            "'import time; time.sleep(60)']).pid)), os.kill(os.getpid(), signal.SIGSEGV)) "
                            "if run == 1 else (print('second run', flush=True), time.sleep(60))")
    sup, log = _supervise(tmp_path, argv, "second run")
    try:
        assert "killed 1 process(es) the crashed one left behind" in log.read_text()
        assert int(stray.read_text()) not in group_members(sup.pid)  # (a zombie at most, never alive)
    finally:
        os.killpg(sup.pid, signal.SIGTERM)
        sup.wait(timeout=10)


def test_sigterm_to_the_group_stops_both_without_a_restart(tmp_path: Path) -> None:
    """What `conflux down` does: SIGTERM to the process group the supervisor leads."""
    sup, log = _supervise(tmp_path, _child(tmp_path, "print('child up', flush=True); time.sleep(60)"), "child up")
    os.killpg(sup.pid, signal.SIGTERM)
    assert sup.wait(timeout=10) == 128 + signal.SIGTERM
    assert _runs(tmp_path) == 1
    assert "restarting" not in log.read_text()
