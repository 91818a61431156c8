"""`make bench-cache`: time to first token of an exact-cache hit through the platform (edge/cache.py), and of
a semantic hit (the same question reworded: edge/semantic_cache.py), against the same deterministic requests
answered by the chain in the same run (`Cache-Control: no-cache`: looked past, generated afresh). Streamed
chats of the echo model, one at a time by default, each prompt seeded once before it is timed. Prints JSON
(medians of the runs' percentiles, each run's figures, CPU per chat of each service on the hit paths) and
writes .conflux/bench/cache.json. Goal (issue 13): exact-hit TTFT p50 <= 10 ms on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import time
import uuid
from typing import Any

import httpx

from conflux.config import Settings
from producers.bench import pct, timed_stream
from producers.cpu import cpu_seconds, per_chat_ms
from producers.keys import bench_key


async def ttft(http: httpx.AsyncClient, base: str, key: str, prompt: str, *, fresh: bool) -> tuple[float, str]:
    """(ms to the first content chunk, x-cache) of one deterministic streamed chat."""
    body = {"model": "echo", "stream": True, "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "user", "content": prompt}]}
    headers = {"Authorization": f"Bearer {key}", **({"Cache-Control": "no-cache"} if fresh else {})}
    # Read to the end (timed_stream does): a cancelled answer is not stored, and the next run would miss.
    out = await timed_stream(http, f"{base}/chat/completions", body, headers)
    return out.ttft_ms, out.headers.get("x-cache", "")


async def level(http: httpx.AsyncClient, base: str, key: str, prompts: list[str], concurrency: int,
                fresh: bool, want: str) -> list[float]:
    sem = asyncio.Semaphore(concurrency)
    outcomes: list[str] = []

    async def one(p: str) -> float:
        async with sem:
            ms, cache = await ttft(http, base, key, p, fresh=fresh)
            outcomes.append(cache)
            return ms

    times = list(await asyncio.gather(*(one(p) for p in prompts)))
    if wrong := [c for c in outcomes if c != want]:
        raise RuntimeError(f"{len(wrong)} of {len(outcomes)} chats were {wrong[0]!r}, not {want!r}")
    return times


async def run(args: argparse.Namespace, settings: Settings, key: str) -> dict[str, Any]:
    base = f"http://127.0.0.1:{settings.edge_port}/v1"
    runs: list[dict[str, Any]] = []
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=args.concurrency + 4)) as http:
        for r in range(args.runs):
            prompts = [f"cache bench {uuid.uuid4().hex[:8]} alpha beta gamma {i}" for i in range(args.chats)]
            # Seeded (stored) and a chain baseline at once: no-cache answers afresh and stores the answer.
            chain = await level(http, base, key, prompts, args.concurrency, fresh=True, want="miss")
            cpu0 = cpu_seconds(settings.run_dir)
            t0 = time.perf_counter()
            hits = await level(http, base, key, prompts, args.concurrency, fresh=False, want="hit")
            wall = time.perf_counter() - t0
            cpu = per_chat_ms(cpu0, cpu_seconds(settings.run_dir), len(prompts))
            # The same questions reworded (capitalised, a question mark): semantic hits on the seeded answers.
            cpu1 = cpu_seconds(settings.run_dir)
            semantic = await level(http, base, key, [p.capitalize() + "?" for p in prompts], args.concurrency,
                                   fresh=False, want="semantic-hit")
            runs.append({"run": r + 1, "hit_ttft_ms": {"p50": pct(hits, 0.5), "p99": pct(hits, 0.99)},
                         "semantic_hit_ttft_ms": {"p50": pct(semantic, 0.5), "p99": pct(semantic, 0.99)},
                         "chain_ttft_ms": {"p50": pct(chain, 0.5), "p99": pct(chain, 0.99)},
                         "hits_per_s": round(len(hits) / wall, 1), "cpu_ms_per_hit": cpu,
                         "cpu_ms_per_semantic_hit": per_chat_ms(cpu1, cpu_seconds(settings.run_dir), len(prompts))})
            print(json.dumps(runs[-1]), flush=True)

    def median(path: tuple[str, str]) -> float:
        return round(statistics.median(float(x[path[0]][path[1]]) for x in runs), 2)

    return {
        "bench": "exact-cache hit TTFT vs the chain (same deterministic requests, Cache-Control: no-cache)",
        "conditions": {"model": "echo", "max_tokens": 16, "stream": True, "concurrency": args.concurrency,
                       "chats_per_run": args.chats, "runs": args.runs, "cpus": os.cpu_count(),
                       "machine": platform.machine(), "load generator": "same machine"},
        "hit_ttft_ms": {"p50": median(("hit_ttft_ms", "p50")), "p99": median(("hit_ttft_ms", "p99"))},
        "semantic_hit_ttft_ms": {"p50": median(("semantic_hit_ttft_ms", "p50")),
                                 "p99": median(("semantic_hit_ttft_ms", "p99"))},
        "chain_ttft_ms": {"p50": median(("chain_ttft_ms", "p50")), "p99": median(("chain_ttft_ms", "p99"))},
        "goal": "hit TTFT p50 <= 10 ms", "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--chats", type=int, default=200, help="prompts per run (each timed once as a hit)")
    ap.add_argument("--concurrency", type=int, default=1)
    settings = Settings.from_env()
    report = asyncio.run(run(ap.parse_args(argv), settings, bench_key(settings)))
    out = settings.home / "bench" / "cache.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
