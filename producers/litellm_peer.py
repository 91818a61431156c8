"""The peer in `make bench`: LiteLLM's proxy (`litellm[proxy]` from PyPI, in its own venv under .conflux/ so
its pins never touch the project's) in front of the echo upstream (producers/echo_upstream.py), loaded like
Conflux's echo levels. Overhead = TTFT through LiteLLM - TTFT straight from the upstream, per percentile."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from conflux.config import Settings
from producers.bench import timed_stream

LITELLM = "litellm[proxy]==1.108.5"
UPSTREAM_PORT = 18091
PROXY_PORT = 18090
MASTER_KEY = "sk-conflux-bench-" + secrets.token_hex(16)  # the proxy refuses to start without one
CONFIG = """model_list:
  - model_name: echo
    litellm_params:
      model: openai/echo
      api_base: http://127.0.0.1:{upstream}/v1
      api_key: unused
"""


def ensure_venv(home: Path) -> Path:
    """The proxy's venv (installed once; pip output goes to .conflux/logs/litellm-install.log)."""
    venv = home / "litellm-venv"
    stamp = venv / f".installed-{LITELLM}"
    if not stamp.exists():
        print(f"[bench] installing {LITELLM} into {venv} (once)", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        with (home / "logs" / "litellm-install.log").open("ab") as log:
            subprocess.run([str(venv / "bin" / "pip"), "install", "-q", LITELLM], check=True, stdout=log, stderr=log)
        stamp.touch()
    return venv


def _wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}; see .conflux/logs/{name}.log")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code < 500:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{name} not up after {timeout_s:.0f}s")


@contextlib.contextmanager
def running(settings: Settings) -> Iterator[None]:
    home = settings.home
    venv = ensure_venv(home)
    cfg = home / "bench" / "litellm.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(CONFIG.format(upstream=UPSTREAM_PORT))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with (settings.logs_dir / "echo-upstream.log").open("ab") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "producers.echo_upstream", "--port",
                                           str(UPSTREAM_PORT)], stdout=log, stderr=log))
        with (settings.logs_dir / "litellm.log").open("ab") as log:
            env = {**os.environ, "LITELLM_LOG": "ERROR", "LITELLM_MASTER_KEY": MASTER_KEY}
            procs.append(subprocess.Popen([str(venv / "bin" / "python"), "-m", "litellm.proxy.proxy_cli", "--config",
                                           str(cfg), "--host", "127.0.0.1", "--port", str(PROXY_PORT),
                                           "--num_workers", "1"], stdout=log, stderr=log, env=env))
        _wait_http(f"http://127.0.0.1:{UPSTREAM_PORT}/docs", 30, procs[0], "echo-upstream")
        _wait_http(f"http://127.0.0.1:{PROXY_PORT}/health/liveliness", 120, procs[1], "litellm")
        yield
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=15)


async def _chat(http: httpx.AsyncClient, base: str, prompt: str) -> float:
    body = {"model": "echo", "stream": True, "max_tokens": 16, "messages": [{"role": "user", "content": prompt}]}
    out = await timed_stream(http, f"{base}/chat/completions", body, {"Authorization": f"Bearer {MASTER_KEY}"})
    return out.ttft_ms


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2)


async def _level(concurrency: int, chats: int) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)
    prompts = [f"Tell me about event streaming, request {i}." for i in range(chats)]

    async def bounded(http: httpx.AsyncClient, base: str, p: str) -> float:
        async with sem:
            return await _chat(http, base, p)

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency + 8)) as http:
        t0 = time.perf_counter()
        proxied = await asyncio.gather(*(bounded(http, f"http://127.0.0.1:{PROXY_PORT}/v1", p) for p in prompts))
        elapsed = time.perf_counter() - t0
        direct = await asyncio.gather(*(bounded(http, f"http://127.0.0.1:{UPSTREAM_PORT}/v1", p) for p in prompts))
    return {"proxy_ttft_ms": {"p50": _pct(proxied, 0.5), "p99": _pct(proxied, 0.99)},
            "upstream_ttft_ms": {"p50": _pct(direct, 0.5), "p99": _pct(direct, 0.99)},
            "overhead_ms": {q: round(_pct(proxied, x) - _pct(direct, x), 2) for q, x in (("p50", 0.5), ("p99", 0.99))},
            "chats_per_s": round(chats / elapsed, 2), "chats": chats}


async def bench(settings: Settings, concurrency: list[int], min_chats: int, runs: int) -> dict[str, Any]:
    out: dict[str, Any] = {"peer": LITELLM, "upstream": "producers/echo_upstream.py, 16 pieces"}
    with running(settings):
        for c in concurrency:
            done = [await _level(c, max(min_chats, c * 4)) for _ in range(runs)]
            out[f"c{c}"] = {
                "overhead_ms": {q: round(statistics.median(r["overhead_ms"][q] for r in done), 2)
                                for q in ("p50", "p99")},
                "chats_per_s": round(statistics.median(r["chats_per_s"] for r in done), 2), "runs": done}
            print(f"[bench] litellm c{c}: overhead p50 {out[f'c{c}']['overhead_ms']['p50']} ms, "
                  f"{out[f'c{c}']['chats_per_s']} chats/s", file=sys.stderr, flush=True)
    return out
