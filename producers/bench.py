"""`make bench`: time to first token through the platform versus a direct Triton call, in the same run.

For each model and concurrency level, the same number of streamed chats goes (1) through the edge and the
whole chain and (2) straight to Triton's gRPC stream. Overhead = platform TTFT - direct TTFT, per
percentile. Prints JSON and writes .conflux/bench/latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import httpx

from conflux.config import Settings
from conflux.inference import stream_generate
from conflux.llm import Message, render_chatml
from producers.keys import bench_key

MODELS = {"echo": ("echo", "echo", "plain"), "smollm2": ("smollm2-135m-instruct", "smollm2", "chatml")}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2) if s else float("nan")


async def platform_chat(http: httpx.AsyncClient, base: str, key: str, model: str, prompt: str,
                        max_tokens: int) -> float:
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "messages": [{"role": "user", "content": prompt}]}
    t0 = time.perf_counter()
    ttft = None
    async with http.stream("POST", f"{base}/chat/completions", json=body,
                           headers={"Authorization": f"Bearer {key}"}) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
        async for line in resp.aiter_lines():
            if ttft is None and line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                ttft = (time.perf_counter() - t0) * 1000
    if ttft is None:
        raise RuntimeError("stream ended without content")
    return ttft


async def direct_chat(url: str, triton_model: str, template: str, prompt: str, max_tokens: int) -> float:
    text = render_chatml([Message("user", prompt)]) if template == "chatml" else prompt
    ttft = None
    async for piece in stream_generate(url, triton_model, text, max_tokens, timeout_s=120):
        ttft = ttft if ttft is not None else piece.elapsed_ms
    if ttft is None:
        raise RuntimeError("no tokens")
    return ttft


async def level(settings: Settings, key: str, name: str, concurrency: int, chats: int,
                max_tokens: int) -> dict[str, Any]:
    model, triton_model, template = MODELS[name]
    base = f"http://127.0.0.1:{settings.edge_port}/v1"
    sem = asyncio.Semaphore(concurrency)
    prompts = [f"Tell me about event streaming, request {i}." for i in range(chats)]

    async def bounded(coro: Any) -> float:
        async with sem:
            return float(await coro)

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency + 8)) as http:
        t0 = time.perf_counter()
        plat = await asyncio.gather(*(bounded(platform_chat(http, base, key, model, p, max_tokens)) for p in prompts))
        elapsed = time.perf_counter() - t0
    direct = await asyncio.gather(*(bounded(direct_chat(settings.triton_grpc_url, triton_model, template, p,
                                                        max_tokens)) for p in prompts))
    out: dict[str, Any] = {
        "platform_ttft_ms": {"p50": pct(plat, 0.5), "p99": pct(plat, 0.99)},
        "direct_ttft_ms": {"p50": pct(direct, 0.5), "p99": pct(direct, 0.99)},
        "chats_per_s": round(chats / elapsed, 2),
        "chats": chats,
    }
    out["overhead_ms"] = {q: round(out["platform_ttft_ms"][q] - out["direct_ttft_ms"][q], 2) for q in ("p50", "p99")}
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.from_env()
    key = await asyncio.to_thread(bench_key, settings)  # plan enterprise: load is not cut by rate limits
    result: dict[str, Any] = {}
    for name in args.models:
        result[name] = {}
        for c in args.concurrency:
            chats = max(args.min_chats, c * (4 if name == "echo" else 2))
            runs = [await level(settings, key, name, c, chats, args.max_tokens[name]) for _ in range(args.runs)]
            # Several runs (this machine is noisy): each figure is the median over runs; the runs stay visible.
            merged: dict[str, Any] = {
                m: {q: round(statistics.median(r[m][q] for r in runs), 2) for q in ("p50", "p99")}
                for m in ("platform_ttft_ms", "direct_ttft_ms", "overhead_ms")}
            merged["chats_per_s"] = round(statistics.median(r["chats_per_s"] for r in runs), 2)
            merged["runs"] = runs
            result[name][f"c{c}"] = merged
            print(f"[bench] {name} c{c}: platform p50 {merged['platform_ttft_ms']['p50']} ms, overhead p50 "
                  f"{merged['overhead_ms']['p50']} / p99 {merged['overhead_ms']['p99']} ms, "
                  f"{merged['chats_per_s']} chats/s", file=sys.stderr, flush=True)
    result["conditions"] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version(),
        "runs_per_level": args.runs, "max_tokens": args.max_tokens, "stack": "local: 1 edge, 1 worker, Triton CPU",
        "ttft": "platform: HTTP request sent -> first content SSE chunk; direct: gRPC stream sent -> first piece",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--models", nargs="+", default=["echo", "smollm2"], choices=list(MODELS))
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--min-chats", type=int, default=24)
    args = ap.parse_args(argv)
    args.max_tokens = {"echo": 16, "smollm2": 16}
    result = asyncio.run(run(args))
    out = Settings.from_env().home / "bench" / "latest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items()}, indent=2, default=str))
    print(f"[bench] written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
