"""Keeps one local service running through crashes, as `restart: unless-stopped` (compose) and a pod's restart
policy (Kubernetes) do in production: `python -m conflux.stack.supervise --name triton -- tritonserver ...`.

Why: in one CI run Triton died the moment a worker was SIGKILLed with 50 streams open, and with no one to
restart it every chat after that failed. The likely cause is a known race in Triton 2.51's gRPC frontend (2.51 is
the newest the nvidia-pytriton wheel carries) between a stream's cancellation and its last response
(triton-inference-server/server#7368, fixed in 24.12), not reproduced here in 110 such kills.

What counts as a crash: a death by a signal nobody asked for (SEGV, ABRT, BUS, an OOM kill). A non-zero exit
is the service refusing to run (a bad config, a model that does not load) and restarting cannot mend it, so
it ends the supervisor with the same code. SIGTERM or SIGINT, to the supervisor or to the process group as
`conflux down` sends it, stops both. Restarts are capped (MAX_RESTARTS within WINDOW_S), with a growing pause.

The child stays in the supervisor's process group, so the stack's group signals (stop, kill, rss) reach both.
Only the standard library is imported here: the supervisor should cost a few MB, not the platform's imports.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

MAX_RESTARTS = 5
WINDOW_S = 120.0
FIRST_PAUSE_S = 0.5
MAX_PAUSE_S = 8.0
ASKED_TO_STOP = frozenset({signal.SIGTERM, signal.SIGINT})


def say(name: str, message: str) -> None:
    print(f"[supervise {time.strftime('%H:%M:%S')}] {name}: {message}", flush=True)


def describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def is_crash(returncode: int) -> bool:
    return returncode < 0 and -returncode not in ASKED_TO_STOP


def group_members(pgid: int, but: int = 0) -> list[int]:
    """Live processes of a process group (zombies left out), except `but`. What a crashed server leaves behind
    (Triton's Python-backend stubs notice their server's death, and some of them then hang instead of exiting);
    also what a service's memory is summed over (Service.rss_mb)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != but:
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:  # state, ppid, pgrp
                found.append(int(entry))
    return found


def kill_leftovers() -> int:
    """SIGKILLs the rest of this process's group, so nothing of a crashed server outlives it. How many. Only
    when the supervisor leads its group (the stack starts it in a session of its own): run from a script
    without one, the group would hold the script too."""
    if os.getpgid(0) != os.getpid():
        return 0
    pids = group_members(os.getpgid(0), but=os.getpid())
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return len(pids)


class Supervisor:
    def __init__(self, name: str, argv: list[str], *, max_restarts: int = MAX_RESTARTS, window_s: float = WINDOW_S,
                 clean_up: Callable[[], int] = kill_leftovers) -> None:
        self.name = name
        self.argv = argv
        self.max_restarts = max_restarts
        self.window_s = window_s
        self._clean_up = clean_up
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.restarts: list[float] = []  # monotonic times of recent restarts

    def stop(self, signum: int, _frame: object = None) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)  # harmless when the group signal already reached it

    def run(self) -> int:
        pause = FIRST_PAUSE_S
        while True:
            try:
                self.child = subprocess.Popen(self.argv)
            except OSError as exc:
                say(self.name, f"cannot start {self.argv[0]}: {exc}")
                return 127
            if self.stopping:  # asked while it was being started: the signal may have missed it
                self.child.terminate()
            code = self.child.wait()
            if self.stopping or not is_crash(code):
                if not self.stopping:
                    say(self.name, f"{describe(code)}; not restarting (not a crash)")
                return code if code >= 0 else 128 - code
            if stray := self._clean_up():
                say(self.name, f"killed {stray} process(es) the crashed one left behind")
            now = time.monotonic()
            if self.restarts and now - self.restarts[-1] > self.window_s:
                pause = FIRST_PAUSE_S  # it ran well for a while: this crash is not part of a loop
            self.restarts = [t for t in self.restarts if now - t < self.window_s]
            if len(self.restarts) >= self.max_restarts:
                say(self.name, f"{describe(code)}; {len(self.restarts)} restarts within {self.window_s:.0f}s "
                               "already, giving up")
                return 128 - code
            say(self.name, f"{describe(code)}; restarting in {pause:.1f}s "
                           f"(restart {len(self.restarts) + 1} of at most {self.max_restarts} "
                           f"within {self.window_s:.0f}s)")
            if self._pause(pause):
                return 128 - code
            self.restarts.append(time.monotonic())
            pause = min(pause * 2, MAX_PAUSE_S)

    def _pause(self, seconds: float) -> bool:
        """Sleeps, waking early when asked to stop; True if asked."""
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.stopping


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conflux.stack.supervise", description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True, help="the service's name, for the log lines")
    parser.add_argument("--max-restarts", type=int, default=MAX_RESTARTS)
    parser.add_argument("--window-s", type=float, default=WINDOW_S)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the service's command line")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to supervise (put it after --)")
    sup = Supervisor(args.name, command, max_restarts=args.max_restarts, window_s=args.window_s)
    for sig in ASKED_TO_STOP:
        signal.signal(sig, sup.stop)
    return sup.run()


if __name__ == "__main__":
    sys.exit(main())
