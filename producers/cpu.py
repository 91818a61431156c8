"""CPU time per local service, from /proc: utime + stime of every process in the service's session (each
service runs in a session of its own, so Triton's backend stubs and Kafka's JVM threads are counted with it).

Used by `make bench` to show CPU per chat by service, so that the next regression shows where it lands.
"""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid_dir: Path) -> tuple[int, float] | None:
    """(session id, CPU seconds incl. reaped children) of one process."""
    try:
        raw = (pid_dir / "stat").read_text()
    except OSError:
        return None  # gone between listing and reading
    fields = raw[raw.rindex(")") + 2:].split()  # the command name may hold spaces and parentheses
    # After the name: state(0) ppid(1) pgrp(2) session(3) ... utime(11) stime(12) cutime(13) cstime(14)
    return int(fields[3]), sum(int(f) for f in fields[11:15]) / TICKS


def service_pids(run_dir: Path) -> dict[str, int]:
    out = {}
    for f in sorted(run_dir.glob("*.pid")):
        try:
            out[f.stem] = int(f.read_text().strip())
        except ValueError:
            continue
    return out


def cpu_seconds(run_dir: Path) -> dict[str, float]:
    """CPU seconds used so far by each service named in run_dir (<service>.pid holds its session leader)."""
    sessions = {pid: name for name, pid in service_pids(run_dir).items()}
    totals = dict.fromkeys(sessions.values(), 0.0)
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (st := _stat(d)) is not None and st[0] in sessions:
            totals[sessions[st[0]]] += st[1]
    return totals


def per_chat_ms(before: dict[str, float], after: dict[str, float], chats: int) -> dict[str, float]:
    return {name: round((after.get(name, 0.0) - before.get(name, 0.0)) * 1000 / max(chats, 1), 2)
            for name in sorted(after)}
