"""The dashboard in headless Chromium after real traffic: its charts and timeline show ClickHouse's values."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import tempfile
import time

import clickhouse_connect
import httpx
import pytest
import redis.asyncio as aioredis

from conflux.budget import Budget
from conflux.config import Settings
from conflux.tenants import ApiKeyStore
from tests.integration.helpers import new_tenant_key_sync

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1800", "--virtual-time-budget=15000"]


def chromium(*args: str) -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("Debian's chromium is needed for the dashboard test: apt-get install chromium (`.ci/run` does)")
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                             text=True, timeout=120, check=False)
    return out.stdout


def test_dashboard_shows_the_values_in_clickhouse(stack: Settings) -> None:
    tenant, key = new_tenant_key_sync(stack)
    base = f"http://127.0.0.1:{stack.edge_port}"
    ids = []
    with httpx.Client(timeout=60) as http:
        for text in ("first dashboard question", "second dashboard question", "third one"):
            r = http.post(f"{base}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": "echo", "max_tokens": 4, "messages": [{"role": "user", "content": text}]})
            ids.append(r.json()["id"])
    ch = clickhouse_connect.get_client(dsn=stack.clickhouse_url, compress=False)
    stored: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the sink stored the whole session
            rows = ch.query("SELECT event_type, count() FROM events FINAL WHERE tenant_id = {t:String} "
                            "GROUP BY event_type", parameters={"t": tenant}).result_rows
            stored = {str(k): int(v) for k, v in rows}
            if stored.get("response_delivered") == 3 and stored.get("quality_scored") == 3:
                break
            time.sleep(0.25)
        timeline = [r[0] for r in ch.query(
            "SELECT event_type FROM events FINAL WHERE request_id = {r:String} ORDER BY event_time, event_type",
            parameters={"r": ids[0]}).result_rows]
    finally:
        ch.close()

    async def set_budget() -> None:
        redis = aioredis.Redis.from_url(stack.redis_url)
        try:
            await ApiKeyStore(redis).set_budget(tenant, Budget("day", None, 100_000))
        finally:
            await redis.aclose()

    asyncio.run(set_budget())
    url = f"{base}/dashboard#key={key}&request={ids[0]}"
    dom = chromium("--dump-dom", url)
    assert 'data-loaded="true"' in dom, "the page did not finish loading its data"
    # Totals: every event type with the count ClickHouse holds.
    for event_type, n in stored.items():
        assert re.search(rf'data-event="{event_type}">{event_type} <b>{n}</b>', dom), (event_type, n)
    # Seven charts drawn by the charting library (Plotly renders into svg.main-svg).
    for chart in ("requests", "latency", "hops", "safety", "feedback", "cost", "quality"):
        section = dom.split(f'id="{chart}"', 1)[1].split('class="card"', 1)[0]
        assert "main-svg" in section, f"chart {chart} not drawn"
    assert all(rid in dom for rid in ids)  # the recent-requests table
    quality = httpx.get(f"{base}/api/metrics/quality", headers={"Authorization": f"Bearer {key}"}).json()["rows"]
    assert [(r["model"], r["answers"], r["with_sources"]) for r in quality] == [("echo", 3, 0)], quality
    budget = dom.split('data-budget="tenant-day">', 1)[1].split("</span>", 1)[0]
    assert "of 100000 tokens" in budget and "left" in budget, budget  # used versus left
    assert 'data-testid="range"' in dom
    shown = re.findall(r"<tr><td>([a-z_]+)</td><td>[a-z.]+</td>", dom.split('data-testid="timeline"', 1)[1])
    assert shown == timeline, "the timeline must list the request's events in ClickHouse's order"

    shot = stack.home / "dashboard.png"
    chromium(f"--screenshot={shot}", url)
    assert shot.exists() and shot.stat().st_size > 10_000  # kept as the test run's artifact
