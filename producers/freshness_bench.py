"""Freshness: how long after an answer is delivered its events are visible in the metrics API, under load.

Background load: echo chats at `--concurrency` streams through the edge. Probes: a chat every 0.5 s, then the
request's timeline is polled until its response_delivered event appears. Prints JSON (p50/p99 seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import httpx

from conflux.config import Settings
from producers.bench import pct
from producers.keys import bench_key


async def _send(http: httpx.AsyncClient, method: str, url: str, **kw: Any) -> httpx.Response:
    """One retry on a transport error: a keep-alive connection the server closed just as it was reused."""
    try:
        return await http.request(method, url, **kw)
    except httpx.TransportError:
        return await http.request(method, url, **kw)


async def load(http: httpx.AsyncClient, base: str, key: str, stop: asyncio.Event, done: list[int]) -> None:
    body = {"model": "echo", "max_tokens": 16, "messages": [{"role": "user", "content": "background load"}]}
    while not stop.is_set():
        r = await _send(http, "POST", f"{base}/v1/chat/completions", json=body,
                        headers={"Authorization": f"Bearer {key}"})
        done[0] += r.status_code == 200


async def probe(http: httpx.AsyncClient, base: str, key: str) -> float:
    auth = {"Authorization": f"Bearer {key}"}
    r = await _send(http, "POST", f"{base}/v1/chat/completions", headers=auth,
                    json={"model": "echo", "max_tokens": 4, "messages": [{"role": "user", "content": "probe"}]})
    answered = time.perf_counter()
    rid = r.json()["id"]
    while True:
        t = await _send(http, "GET", f"{base}/api/requests/{rid}/timeline", headers=auth)
        if t.status_code == 200 and any(e["event_type"] == "response_delivered" for e in t.json()["events"]):
            return time.perf_counter() - answered
        if time.perf_counter() - answered > 60:
            return float("inf")
        await asyncio.sleep(0.05)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    settings = Settings.from_env()
    key = await asyncio.to_thread(bench_key, settings)
    base = f"http://127.0.0.1:{settings.edge_port}"
    stop = asyncio.Event()
    done = [0]
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=args.concurrency + 8)) as http:
        workers = [asyncio.create_task(load(http, base, key, stop, done)) for _ in range(args.concurrency)]
        t0 = time.perf_counter()
        delays = []
        for _ in range(args.probes):
            delays.append(await probe(http, base, key))
            await asyncio.sleep(0.5)
        elapsed = time.perf_counter() - t0
        stop.set()
        await asyncio.gather(*workers)
    return {"freshness_s": {"p50": pct(delays, 0.5), "p99": pct(delays, 0.99), "max": round(max(delays), 2)},
            "probes": len(delays), "background_streams": args.concurrency,
            "background_chats_per_s": round(done[0] / elapsed, 1),
            "measures": "answer received by the client -> its response_delivered visible in /api timeline"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--probes", type=int, default=60)
    print(json.dumps(asyncio.run(run(ap.parse_args())), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
