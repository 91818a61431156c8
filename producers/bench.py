"""`make bench`: time to first token through the platform versus a direct Triton call, in the same run.

For each model and concurrency level, the same number of streamed chats goes (1) through the edge and the
whole chain and (2) straight to Triton's gRPC stream. Overhead = platform TTFT - direct TTFT, per
percentile. Beside it: CPU per chat by service (from /proc, over the platform runs), each pipeline stage's
share of the worker's time (from its stage timers), and SmolLM2's generated tokens/s through the platform
versus direct at 8 streams. Prints JSON and writes .conflux/bench/latest.json.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from conflux.config import Settings
from conflux.inference import stream_generate
from conflux.llm import Message, render_chatml
from producers.cpu import cpu_seconds, per_chat_ms
from producers.keys import bench_key

REQUEST_PATH = ("edge", "worker", "triton")  # the services a chat's critical path runs through
MODELS = {"echo": ("echo", "echo", "plain"), "smollm2": ("smollm2-135m-instruct", "smollm2", "chatml")}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 2) if s else float("nan")


@dataclass(frozen=True)
class Streamed:
    ttft_ms: float  # to the first chunk with content
    completion_tokens: int  # from the usage chunk (0 without one)
    headers: httpx.Headers


async def timed_stream(http: httpx.AsyncClient, url: str, body: dict[str, Any],
                       headers: dict[str, str]) -> Streamed:
    """One streamed chat completion, read to its end (a caller that leaves early cancels its answer): the time
    to its first content, and its usage. The benchmarks' one way of timing a stream."""
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    async with http.stream("POST", url, json=body, headers=headers) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
        async for line in resp.aiter_lines():
            if ttft is None and line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                ttft = (time.perf_counter() - t0) * 1000
            if line.startswith("data: {") and '"usage":{' in line:
                tokens = int(json.loads(line[6:])["usage"]["completion_tokens"])
    if ttft is None:
        raise RuntimeError("stream ended without content")
    return Streamed(ttft, tokens, resp.headers)


async def platform_chat(http: httpx.AsyncClient, base: str, key: str, model: str, prompt: str,
                        max_tokens: int) -> tuple[float, int]:
    """(time to first content in ms, completion tokens) of one streamed chat through the edge."""
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": prompt}]}
    out = await timed_stream(http, f"{base}/chat/completions", body, {"Authorization": f"Bearer {key}"})
    return out.ttft_ms, out.completion_tokens


async def direct_chat(url: str, triton_model: str, template: str, prompt: str, max_tokens: int) -> tuple[float, int]:
    text = render_chatml([Message("user", prompt)]) if template == "chatml" else prompt
    ttft = None
    pieces = 0
    async for piece in stream_generate(url, triton_model, text, max_tokens, timeout_s=120):
        ttft = ttft if ttft is not None else piece.elapsed_ms
        pieces += 1
    if ttft is None:
        raise RuntimeError("no tokens")
    return ttft, pieces


def stage_seconds(metrics_text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("conflux_worker_stage_seconds_total{"):
            stage = line.split('stage="', 1)[1].split('"', 1)[0]
            out[stage] = out.get(stage, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


async def worker_stages(http: httpx.AsyncClient, settings: Settings) -> dict[str, float]:
    try:
        resp = await http.get(f"http://127.0.0.1:{settings.worker_metrics_port}/metrics", timeout=5)
        return stage_seconds(resp.text)
    except httpx.HTTPError:
        return {}


async def level(settings: Settings, key: str, name: str, concurrency: int, chats: int,
                max_tokens: int) -> dict[str, Any]:
    model, triton_model, template = MODELS[name]
    base = f"http://127.0.0.1:{settings.edge_port}/v1"
    sem = asyncio.Semaphore(concurrency)
    prompts = [f"Tell me about event streaming, request {i}." for i in range(chats)]

    async def bounded(coro: Any) -> tuple[float, int]:
        async with sem:
            return await coro  # type: ignore[no-any-return]

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency + 8)) as http:
        stages0, cpu0 = await worker_stages(http, settings), cpu_seconds(settings.run_dir)
        t0 = time.perf_counter()
        plat = await asyncio.gather(*(bounded(platform_chat(http, base, key, model, p, max_tokens)) for p in prompts))
        elapsed = time.perf_counter() - t0
        cpu1, stages1 = cpu_seconds(settings.run_dir), await worker_stages(http, settings)
    t1 = time.perf_counter()
    direct = await asyncio.gather(*(bounded(direct_chat(settings.triton_grpc_url, triton_model, template, p,
                                                        max_tokens)) for p in prompts))
    direct_elapsed = time.perf_counter() - t1
    cpu = per_chat_ms(cpu0, cpu1, chats)
    stage_time = {k: stages1.get(k, 0.0) - stages0.get(k, 0.0) for k in stages1}
    total_stage = sum(stage_time.values()) or 1.0
    out: dict[str, Any] = {
        "platform_ttft_ms": {"p50": pct([p[0] for p in plat], 0.5), "p99": pct([p[0] for p in plat], 0.99)},
        "direct_ttft_ms": {"p50": pct([d[0] for d in direct], 0.5), "p99": pct([d[0] for d in direct], 0.99)},
        "chats_per_s": round(chats / elapsed, 2),
        "chats": chats,
        "tokens_per_s": {"platform": round(sum(p[1] for p in plat) / elapsed, 1),
                         "direct": round(sum(d[1] for d in direct) / direct_elapsed, 1)},
        "cpu_ms_per_chat": {**cpu, "total": round(sum(cpu.values()), 2),
                            "request_path": round(sum(cpu.get(s, 0.0) for s in REQUEST_PATH), 2)},
        "stage_share": {k: round(v / total_stage, 3) for k, v in sorted(stage_time.items())},
    }
    out["overhead_ms"] = {q: round(out["platform_ttft_ms"][q] - out["direct_ttft_ms"][q], 2) for q in ("p50", "p99")}
    return out


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure is the median over runs (this machine is noisy); the runs stay visible."""
    merged: dict[str, Any] = {
        m: {q: round(statistics.median(r[m][q] for r in runs), 2) for q in ("p50", "p99")}
        for m in ("platform_ttft_ms", "direct_ttft_ms", "overhead_ms")}
    merged["chats_per_s"] = round(statistics.median(r["chats_per_s"] for r in runs), 2)
    for m in ("cpu_ms_per_chat", "stage_share", "tokens_per_s"):
        keys = sorted({k for r in runs for k in r[m]})
        merged[m] = {k: round(statistics.median(r[m].get(k, 0.0) for r in runs), 3) for k in keys}
    direct = merged["tokens_per_s"].get("direct") or 0.0
    merged["tokens_per_s"]["platform_over_direct"] = round(merged["tokens_per_s"]["platform"] / direct, 3) \
        if direct else None
    merged["runs"] = runs
    return merged


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.from_env()
    key = await asyncio.to_thread(bench_key, settings)  # plan enterprise: load is not cut by rate limits
    result: dict[str, Any] = {}
    plan = [("echo", f"c{c}", c, max(args.min_chats, c * 4), 16) for c in args.concurrency]
    if "smollm2" in args.models:
        plan += [("smollm2", f"c{c}", c, max(24, c * 2), 16) for c in (1, 8)]
        # Throughput: 8 streams of 128 tokens, generated tokens/s through the platform vs direct.
        plan.append(("smollm2", "c8_128tok", 8, 16, 128))
    for name, label, c, chats, max_tokens in plan:
        if name not in args.models:
            continue
        runs = [await level(settings, key, name, c, chats, max_tokens) for _ in range(args.runs)]
        merged = merge(runs)
        result.setdefault(name, {})[label] = merged
        print(f"[bench] {name} {label}: platform p50 {merged['platform_ttft_ms']['p50']} ms, overhead p50 "
              f"{merged['overhead_ms']['p50']} / p99 {merged['overhead_ms']['p99']} ms, "
              f"{merged['chats_per_s']} chats/s, tokens/s {merged['tokens_per_s']}, CPU/chat "
              f"{merged['cpu_ms_per_chat'].get('total')} ms (request path "
              f"{merged['cpu_ms_per_chat'].get('request_path')})", file=sys.stderr, flush=True)
    save(result)  # what is measured so far survives a failure of the peer's run
    if args.peer and "echo" in args.models:
        from producers import litellm_peer

        result["litellm"] = await litellm_peer.bench(settings, args.concurrency, args.min_chats, args.runs)
        top = f"c{max(args.concurrency)}"
        if top in result["litellm"] and top in result.get("echo", {}):
            result["echo"][top]["vs_litellm_chats_per_s"] = round(
                result["echo"][top]["chats_per_s"] / result["litellm"][top]["chats_per_s"], 2)
    result["conditions"] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version(),
        "runs_per_level": args.runs,
        "stack": "local: 1 edge, 1 worker, 1 sink, Triton CPU, load generator on the same box",
        "ttft": "platform: HTTP request sent -> first content SSE chunk; direct: gRPC stream sent -> first piece",
        "cpu": "utime+stime of each service's processes (/proc) over the platform runs only, per chat",
        "stage_share": "share of the worker's stage wall time (conflux_worker_stage_seconds_total)",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return result


def save(result: dict[str, Any]) -> Path:
    out = Settings.from_env().home / "bench" / "latest.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--models", nargs="+", default=["echo", "smollm2"], choices=list(MODELS))
    ap.add_argument("--concurrency", nargs="+", type=int, default=[1, 8, 32])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--min-chats", type=int, default=200, help="chats per echo level and run")
    ap.add_argument("--no-peer", dest="peer", action="store_false",
                    help="skip LiteLLM's proxy (the peer, installed once into .conflux/litellm-venv)")
    args = ap.parse_args(argv)
    result = asyncio.run(run(args))
    out = save(result)
    print(json.dumps({k: v for k, v in result.items()}, indent=2, default=str))
    print(f"[bench] written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
