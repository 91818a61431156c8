"""Sustained load: a constant rate of streamed chats (and feedback) for N minutes, reporting throughput, latency
percentiles per window, errors, and the memory of every service over the run (growth must stay <= 10%).

    python -m producers.soak [--minutes 10] [--rate 10] [--window 60] [--warmup 120]

Arrivals are open-loop (a new chat every 1/rate s whether or not earlier ones finished), so a platform that
slows down shows growing latency instead of hiding it. Chats reuse a pool of conversations, like returning
users, so session memory is exercised and bounded. Memory is sampled every 20 s after a warm-up (caches, JIT
and connection pools filled); growth compares the mean of the first two minutes of samples with the mean of
the last two. Prints JSON and writes .conflux/bench/soak.json; exit 1 on errors or on growth over the limit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from conflux.config import Settings
from conflux.stack import manager
from producers.bench import pct
from producers.keys import bench_key

GROWTH_LIMIT_PCT = 10.0
CONVERSATIONS = 50
MAX_IN_FLIGHT = 400  # beyond this the client counts a refusal instead of queueing without bound
MEMORY_EVERY_S = 20.0
EDGE_SAMPLES = 6  # growth compares the mean of the first 2 minutes of samples with that of the last 2


@dataclass
class Window:
    start_s: float
    latency_ms: list[float] = field(default_factory=list)
    ttft_ms: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)

    def summary(self, seconds: float) -> dict[str, Any]:
        return {"t_s": round(self.start_s), "chats": len(self.latency_ms),
                "chats_per_s": round(len(self.latency_ms) / seconds, 2), "errors": self.errors,
                "latency_ms": {"p50": pct(self.latency_ms, 0.5), "p95": pct(self.latency_ms, 0.95),
                               "p99": pct(self.latency_ms, 0.99)},
                "ttft_ms": {"p50": pct(self.ttft_ms, 0.5), "p99": pct(self.ttft_ms, 0.99)}}


async def one_chat(http: httpx.AsyncClient, base: str, key: str, n: int, window: Window) -> None:
    body = {"model": "echo", "stream": True, "max_tokens": 16,
            "messages": [{"role": "user", "content": f"soak chat {n} about streams and events"}]}
    headers = {"Authorization": f"Bearer {key}", "x-conversation-id": f"soak-conv-{n % CONVERSATIONS}"}
    t0 = time.perf_counter()
    ttft = None
    done = False
    try:
        async with http.stream("POST", f"{base}/chat/completions", json=body, headers=headers) as resp:
            if resp.status_code != 200:
                raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
            rid = resp.headers["x-request-id"]
            async for line in resp.aiter_lines():
                if ttft is None and '"content":"' in line and '"content":""' not in line:
                    ttft = (time.perf_counter() - t0) * 1000
                if line.startswith('data: {"error"'):
                    raise RuntimeError(line[:200])
                done = done or line == "data: [DONE]"
        if not done or ttft is None:
            raise RuntimeError("stream ended without an answer")
        window.latency_ms.append((time.perf_counter() - t0) * 1000)
        window.ttft_ms.append(ttft)
        if n % 10 == 0:
            r = await http.post(f"{base}/feedback", headers=headers, json={"response_id": rid, "rating": 4})
            if r.status_code != 200:
                raise RuntimeError(f"feedback HTTP {r.status_code}")
    except (httpx.HTTPError, RuntimeError, KeyError) as exc:
        window.errors += 1
        if len(window.error_samples) < 5:
            window.error_samples.append(repr(exc)[:200])


def memory(settings: Settings) -> dict[str, float | None]:
    """Resident memory of each running local service (no health probes: the sampler must not add load)."""
    return {s.name: s.rss_mb() for s in manager.services(settings) if s.pid() is not None}


async def sample_memory(settings: Settings, every_s: float, samples: list[dict[str, float | None]],
                        stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(await asyncio.to_thread(memory, settings))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


def growth(samples: list[dict[str, float | None]], edge: int) -> dict[str, dict[str, Any]]:
    """Per service: the mean of the first `edge` samples vs the mean of the last `edge`. A single sample at
    each end would make the verdict depend on where a merge or a GC happened to be (ClickHouse's resident
    memory swings by 30 MB within a minute); the raw first and last samples are reported too."""
    out: dict[str, dict[str, Any]] = {}
    for name in samples[0]:
        series = [s[name] for s in samples if s.get(name)]
        if len(series) < 2 * edge:
            continue
        head, tail = sum(series[:edge]) / edge, sum(series[-edge:]) / edge  # type: ignore[arg-type]
        out[name] = {"first": series[0], "last": series[-1], "mean_start_mb": round(head, 1),
                     "mean_end_mb": round(tail, 1), "growth_pct": round(tail / head * 100 - 100, 1),
                     "min_mb": min(series), "max_mb": max(series)}  # type: ignore[type-var]
    return out


async def soak(settings: Settings, minutes: float, rate: float, window_s: float, warmup_s: float,
               progress: Any) -> dict[str, Any]:
    key = await asyncio.to_thread(bench_key, settings)
    base = f"http://127.0.0.1:{settings.edge_port}/v1"
    windows: list[Window] = []
    samples: list[dict[str, float | None]] = []
    stop_sampling = asyncio.Event()
    sampler: asyncio.Task[None] | None = None
    tasks: set[asyncio.Task[None]] = set()
    refused = 0
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=MAX_IN_FLIGHT)) as http:
        t0 = time.monotonic()
        end = t0 + warmup_s + minutes * 60
        warm = Window(0)
        current = warm
        n = 0
        while (now := time.monotonic()) < end:
            if current is warm and now - t0 >= warmup_s:
                sampler = asyncio.create_task(sample_memory(settings, MEMORY_EVERY_S, samples, stop_sampling))
                await asyncio.sleep(0)
                progress(f"warm-up done; sampling memory every {MEMORY_EVERY_S:.0f}s")
                current = Window(now - t0 - warmup_s)
                windows.append(current)
            elif current is not warm and now - t0 - warmup_s - current.start_s >= window_s:
                progress(f"t={current.start_s:.0f}s {json.dumps(current.summary(window_s))}")
                current = Window(now - t0 - warmup_s)
                windows.append(current)
            n += 1
            if len(tasks) >= MAX_IN_FLIGHT:
                refused += 1
                current.errors += 1
            else:
                task = asyncio.create_task(one_chat(http, base, key, n, current))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(max(0.0, t0 + n / rate - time.monotonic()))
        stop_sampling.set()
        await asyncio.gather(*tasks, *([sampler] if sampler else []))
    mem = growth(samples, EDGE_SAMPLES)
    all_lat = [v for w in windows for v in w.latency_ms]
    all_ttft = [v for w in windows for v in w.ttft_ms]
    errors = sum(w.errors for w in windows)
    seconds = minutes * 60
    return {
        "conditions": {"minutes": minutes, "rate_per_s": rate, "model": "echo", "max_tokens": 16, "stream": True,
                       "feedback_every": 10, "conversations": CONVERSATIONS, "warmup_s": warmup_s,
                       "window_s": window_s, "machine_cpus": os.cpu_count()},
        "chats": len(all_lat), "chats_per_s": round(len(all_lat) / seconds, 2), "errors": errors,
        "client_refused": refused, "error_samples": [s for w in windows for s in w.error_samples][:10],
        "latency_ms": {"p50": pct(all_lat, 0.5), "p95": pct(all_lat, 0.95), "p99": pct(all_lat, 0.99)},
        "ttft_ms": {"p50": pct(all_ttft, 0.5), "p99": pct(all_ttft, 0.99)},
        "windows": [w.summary(window_s) for w in windows],
        "memory": mem, "memory_samples": len(samples), "memory_every_s": MEMORY_EVERY_S,
        "memory_ok": bool(mem) and all(m["growth_pct"] <= GROWTH_LIMIT_PCT for m in mem.values()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Constant load for N minutes; throughput, latency, errors, memory.")
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=float, default=10.0, help="new chats per second (open loop)")
    p.add_argument("--window", type=float, default=60.0, help="seconds per reported window")
    p.add_argument("--warmup", type=float, default=120.0, help="seconds of load before memory is first sampled")
    args = p.parse_args(argv)
    settings = Settings.from_env()

    def progress(msg: str) -> None:
        print(f"[soak] {msg}", file=sys.stderr, flush=True)

    progress(f"{args.minutes} min at {args.rate} chats/s after {args.warmup}s warm-up")
    report = asyncio.run(soak(settings, args.minutes, args.rate, args.window, args.warmup, progress))
    out = settings.home / "bench" / "soak.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if report["errors"] == 0 and report["memory_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
