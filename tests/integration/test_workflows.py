"""The workflow API on the real stack: an article run end to end (echo models: the platform, not the model, is
under test), its live events, idempotent creation, cancel, a step that keeps failing, a topic input safety
refuses, bad requests and tenant isolation."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from typing import Any

import httpx
import pytest

from conflux.config import REPO_ROOT, Settings
from conflux.inference import TritonClient
from conflux.safety_model import SafetyHead, assess
from conflux.taxonomy import tenant_policy
from producers.safety_data import read_jsonl
from tests.integration.helpers import ingest_document, new_tenant_key
from tests.integration.test_dashboard import chromium

pytestmark = pytest.mark.asyncio


def _http(stack: Settings, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{stack.edge_port}/v1", timeout=60,
                             headers={"Authorization": f"Bearer {key}"})


async def _until_ended(http: httpx.AsyncClient, run_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while (run := (await http.get(f"/workflows/{run_id}")).json())["status"] == "running":
        assert time.monotonic() < deadline, run
        await asyncio.sleep(0.5)
    return dict(run)


async def test_an_article_runs_every_step_and_cites_the_tenants_documents(stack: Settings) -> None:
    _, key = await new_tenant_key(stack)
    marker = uuid.uuid4().hex[:8]
    ingest_document(stack, key, f"Tidal range {marker}: the Bay of Fundy has the highest tides on Earth.")
    # The tenant's only other document is unrelated: top_k still finds it, and min_score keeps it uncited.
    ingest_document(stack, key, f"Sourdough bread {marker} rises because a starter of wild yeast ferments the dough.")
    async with _http(stack, key) as http:
        for _ in range(30):  # the document is indexed asynchronously
            created = await http.post("/workflows/article", json={
                "topic": f"tides {marker}", "audience": "students", "sections": ["Fundy", "Moon"], "model": "echo"})
            assert created.status_code == 202, created.text
            run = await _until_ended(http, created.json()["id"])
            if any(marker in c["text"] for c in run["citations"]):
                break
            await asyncio.sleep(1)
        assert run["status"] == "succeeded", run
        assert [s["step"] for s in run["steps"]] == ["outline", "research.0", "research.1", "write.0", "write.1",
                                                     "edit"]
        assert all(s["status"] == "succeeded" and s["attempts"] == 1 for s in run["steps"]), run["steps"]
        assert run["sections"] == ["Fundy", "Moon"] and run["article"]
        assert any(marker in c["text"] and c["section"] in (0, 1) for c in run["citations"]), run["citations"]
        assert not any("Sourdough" in c["text"] for c in run["citations"]), run["citations"]
        listed = (await http.get("/workflows")).json()["data"]
        assert run["id"] in [r["id"] for r in listed]


async def test_events_stream_each_step_then_the_run(stack: Settings) -> None:
    _, key = await new_tenant_key(stack)
    async with _http(stack, key) as http:
        run_id = (await http.post("/workflows/article", json={"topic": "streams", "sections": 2,
                                                               "model": "echo"})).json()["id"]
        kinds: list[str] = []
        steps: list[dict[str, Any]] = []
        final: dict[str, Any] = {}
        async with http.stream("GET", f"/workflows/{run_id}/events") as resp:
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
            kind = ""
            async for line in resp.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                    kinds.append(kind)
                elif line.startswith("data: ") and kind == "step":
                    steps.append(json.loads(line[6:]))
                elif line.startswith("data: ") and kind == "run":
                    final = json.loads(line[6:])
        assert kinds[-1] == "run" and final["status"] == "succeeded" and final["article"], kinds
        # Every step was seen succeed, and in an order its dependencies allow.
        order = [s["step"] for s in steps if s["status"] == "succeeded"]
        assert sorted(order) == sorted(["outline", "research.0", "research.1", "write.0", "write.1", "edit"])
        assert order[0] == "outline" and order[-1] == "edit"
        assert order.index("write.0") > order.index("research.0")


async def test_idempotency_key_returns_the_first_run(stack: Settings) -> None:
    _, key = await new_tenant_key(stack)
    body = {"topic": "the history of bread", "sections": 1, "model": "echo"}
    async with _http(stack, key) as http:
        first = await http.post("/workflows/article", json=body, headers={"Idempotency-Key": "k-1"})
        again = await http.post("/workflows/article", json=body, headers={"Idempotency-Key": "k-1"})
        assert first.status_code == 202 and again.status_code == 200, (first.text, again.text)
        assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
        other = await http.post("/workflows/article", json={**body, "topic": "how tides work"},
                                headers={"Idempotency-Key": "k-1"})
        assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
        fresh = await http.post("/workflows/article", json=body, headers={"Idempotency-Key": "k-2"})
        assert fresh.json()["id"] != first.json()["id"]


async def test_a_cancelled_run_stops_its_step_and_stays_cancelled(stack: Settings) -> None:
    _, key = await new_tenant_key(stack)
    async with _http(stack, key) as http:
        # echo-paced streams 20 pieces/s: the sections take seconds, time enough to cancel during one.
        run_id = (await http.post("/workflows/article", json={"topic": "how rivers form", "sections": ["A", "B"],
                                                               "model": "echo-paced"})).json()["id"]
        writing: list[dict[str, Any]] = []
        for _ in range(100):  # until a section step has reported tokens written
            run = (await http.get(f"/workflows/{run_id}")).json()
            writing = [s for s in run["steps"] if s["step"].startswith("write") and s["status"] == "running"
                       and s["progress"] > 0]
            if writing:
                break
            await asyncio.sleep(0.2)
        assert writing and all(0 < s["progress"] < 1 for s in writing), run["steps"]
        cancelled = await http.post(f"/workflows/{run_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
        again = await http.post(f"/workflows/{run_id}/cancel")
        assert again.status_code == 409 and again.json()["error"]["code"] == "run_ended"
        await asyncio.sleep(3)  # a running step notices within half a second
        run = (await http.get(f"/workflows/{run_id}")).json()
        assert run["status"] == "cancelled"
        assert not [s for s in run["steps"] if s["status"] == "running"], run["steps"]
        assert next(s for s in run["steps"] if s["step"] == "edit")["status"] == "pending"


async def test_a_step_that_keeps_failing_ends_the_run_with_an_explicit_error(stack: Settings) -> None:
    # llama-3.1-8b-instruct is catalogued (TensorRT-LLM on GPUs) but not served by the local Triton: every
    # model call fails, so the outline is tried max_attempts times and the run fails saying why.
    _, key = await new_tenant_key(stack, "enterprise")
    async with _http(stack, key) as http:
        run_id = (await http.post("/workflows/article", json={"topic": "why the sky is blue", "sections": 2,
                                                               "model": "llama-3.1-8b-instruct"})).json()["id"]
        run = await _until_ended(http, run_id, timeout_s=90)
    assert run["status"] == "failed", run
    assert run["error"].startswith("step outline failed") and "ensemble" in run["error"], run["error"]
    outline = run["steps"][0]
    assert outline["attempts"] == 3 and outline["status"] == "failed"


async def test_a_topic_input_safety_blocks_fails_the_run_at_once(stack: Settings) -> None:
    tenant, key = await new_tenant_key(stack)
    triton = TritonClient(stack.triton_grpc_url)
    head, policy = SafetyHead.load(), tenant_policy(tenant, None)
    try:
        rows = read_jsonl(REPO_ROOT / "tests" / "data" / "external" / "safety_test.jsonl")
        for row in rows:  # the first, in file order, that the platform blocks: no picking
            if (row["label"] == "unsafe" and len(row["text"]) <= 300
                    and (await assess(triton, head, policy, row["text"])).verdict == "BLOCK"):
                topic = row["text"]
                break
        else:
            raise AssertionError("no blocked topic in the external test split")
    finally:
        await triton.close()
    async with _http(stack, key) as http:
        run_id = (await http.post("/workflows/article", json={"topic": topic, "model": "echo"})).json()["id"]
        run = await _until_ended(http, run_id)
    assert run["status"] == "failed" and "refused by input safety" in run["error"], run
    assert run["steps"][0]["attempts"] == 1  # refused, not retried
    assert [s["status"] for s in run["steps"][1:]] == ["pending"]  # nothing after it ran


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"topic": "x", "tone": "formal"}, 400, "tone"),
    ({}, 400, "topic"),
    ({"topic": "  "}, 400, "topic"),
    ({"topic": "x" * 301}, 400, "topic"),
    ({"topic": "x", "sections": 0}, 400, "sections"),
    ({"topic": "x", "sections": 9}, 400, "sections"),
    ({"topic": "x", "sections": True}, 400, "sections"),
    ({"topic": "x", "sections": ["ok", ""]}, 400, "sections"),
    ({"topic": "x", "audience": 3}, 400, "audience"),
    ({"topic": "x", "model": "gpt-9"}, 404, "model"),
    ({"topic": "x", "model": "llama-3.1-8b-instruct"}, 403, "model"),  # the free plan may not use it
])
async def test_bad_requests_are_refused_naming_the_field(stack: Settings, body: dict[str, Any], status: int,
                                                         param: str) -> None:
    _, key = await new_tenant_key(stack, "free")
    async with _http(stack, key) as http:
        resp = await http.post("/workflows/article", json=body)
        assert resp.status_code == status, resp.text
        assert resp.json()["error"]["param"] == param


async def test_runs_are_the_tenants_own(stack: Settings) -> None:
    _, key_a = await new_tenant_key(stack)
    _, key_b = await new_tenant_key(stack)
    async with _http(stack, key_a) as a, _http(stack, key_b) as b:
        run_id = (await a.post("/workflows/article", json={"topic": "the life of honey bees", "sections": 1,
                                                            "model": "echo"})).json()["id"]
        for path in (f"/workflows/{run_id}", f"/workflows/{run_id}/events"):
            assert (await b.get(path)).status_code == 404
        assert (await b.post(f"/workflows/{run_id}/cancel")).status_code == 404
        assert run_id not in [r["id"] for r in (await b.get("/workflows")).json()["data"]]
        assert (await a.get("/workflows/wf_nope")).status_code == 404
        assert (await a.post("/workflows/novel", json={"topic": "x"})).status_code == 404
        assert (await httpx.AsyncClient().get(f"http://127.0.0.1:{stack.edge_port}/v1/workflows")).status_code == 401
        await _until_ended(a, run_id)


async def test_conflux_article_shows_each_step_and_prints_the_article(stack: Settings) -> None:
    _, key = await new_tenant_key(stack)
    proc = await asyncio.create_subprocess_exec(
        str(REPO_ROOT / ".venv" / "bin" / "conflux"), "article", "how glaciers move", "--heading", "Ice",
        "--heading", "Flow", "--model", "echo", "--url", f"http://127.0.0.1:{stack.edge_port}",
        env={**os.environ, "CONFLUX_API_KEY": key}, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = (b.decode() for b in await asyncio.wait_for(proc.communicate(), 120))
    assert proc.returncode == 0, err
    run_id = err.split()[1]
    async with _http(stack, key) as http:
        run = (await http.get(f"/workflows/{run_id}")).json()
    assert out.startswith("# how glaciers move\n") and run["article"].strip() in out
    shown = {line.split()[0] for line in err.splitlines() if "] 100%  succeeded" in line}
    assert shown == {"outline", "research.0", "research.1", "write.0", "write.1", "edit"}, err
    assert err.splitlines()[-1].startswith(f"run {run_id} succeeded")
    # Refused requests are the edge's message and exit 2, not a trace.
    bad = await asyncio.create_subprocess_exec(
        str(REPO_ROOT / ".venv" / "bin" / "conflux"), "article", "x", "--sections", "9", "--url",
        f"http://127.0.0.1:{stack.edge_port}", env={**os.environ, "CONFLUX_API_KEY": key},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, bad_err = await bad.communicate()
    assert bad.returncode == 2 and b"HTTP 400: sections:" in bad_err and b"Traceback" not in bad_err


async def test_the_dashboard_shows_a_runs_steps(stack: Settings) -> None:
    _, key = await new_tenant_key(stack)
    async with _http(stack, key) as http:
        run_id = (await http.post("/workflows/article", json={"topic": "salt marshes", "sections": ["Mud", "Birds"],
                                                               "model": "echo"})).json()["id"]
        run = await _until_ended(http, run_id)
    dom = await asyncio.to_thread(chromium, "--dump-dom",
                                  f"http://127.0.0.1:{stack.edge_port}/dashboard#key={key}&run={run_id}")
    assert 'data-loaded="true"' in dom, "the page did not finish loading its data"
    row = dom.split(f'<tr class="run" data-id="{run_id}">', 1)[1].split("</tr>", 1)[0]
    assert "<td>article</td><td>succeeded</td>" in row and f"<td>{run['cost_usd']:.6f}</td>" in row, row
    for step in run["steps"]:
        cells = dom.split(f'<tr data-step="{step["step"]}">', 1)[1].split("</tr>", 1)[0]
        duration = f"{step['ended_at'] - step['started_at']:.2f}"
        assert f"<td>succeeded</td><td>1</td><td>{step['worker']}</td>" in cells and duration in cells, cells
    chart = dom.split('id="wf-chart"', 1)[1].split("</table>", 1)[0]
    assert "main-svg" in chart, "the step timeline was not drawn"
