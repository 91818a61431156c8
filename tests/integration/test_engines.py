"""Redis, Triton, ClickHouse and the vector store, each exercised for real through its client."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import clickhouse_connect
import pytest
import redis
from clickhouse_connect.driver.exceptions import DatabaseError

from conflux.config import Settings
from conflux.inference import InferenceError, stream_generate
from conflux.vectorstore import Chunk, VectorStore, resolve_vector_backend
from conflux.vectorstore.lance_store import LanceStore
from conflux.vectorstore.weaviate_store import WeaviateStore


def test_status_json_reports_every_service_healthy(stack: Settings) -> None:
    out = subprocess.run([sys.executable, "-m", "conflux.cli", "status", "--json"],
                         capture_output=True, text=True, check=False, timeout=60)
    table = json.loads(out.stdout)
    assert out.returncode == 0, out.stdout + out.stderr
    assert {"kafka", "redis", "triton", "clickhouse"} <= set(table)
    assert "weaviate" in table or "vector_store" in table
    for name, row in table.items():
        assert row["healthy"], f"{name}: {row['detail']}"
        if row["pid"] is not None:
            assert row["rss_mb"] > 0


def test_second_up_is_idempotent_and_fast(stack: Settings) -> None:
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "conflux.cli", "up"], capture_output=True, text=True,
                         check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "started: none" in out.stderr
    assert time.monotonic() - t0 < 60


def test_redis_answers(stack: Settings) -> None:
    r = redis.Redis.from_url(stack.redis_url)
    key = f"test:{uuid.uuid4().hex}"
    try:
        assert r.set(key, "v", ex=30)
        assert r.get(key) == b"v"
        assert r.config_get("appendonly")["appendonly"] == "yes"
    finally:
        r.delete(key)
        r.close()


async def test_triton_streams_the_echo_model(stack: Settings) -> None:
    pieces = [p async for p in stream_generate(stack.triton_grpc_url, "echo", "one two three", 7)]
    assert "".join(p.text for p in pieces) == "one two three one two three one"
    assert all(a.elapsed_ms <= b.elapsed_ms for a, b in itertools.pairwise(pieces))


async def test_triton_unknown_model_is_a_clear_error(stack: Settings) -> None:
    with pytest.raises(InferenceError, match="no_such_model"):
        _ = [p async for p in stream_generate(stack.triton_grpc_url, "no_such_model", "x", 3, timeout_s=5)]


@pytest.fixture
def ch(stack: Settings) -> Iterator[clickhouse_connect.driver.Client]:
    client = clickhouse_connect.get_client(dsn=stack.clickhouse_url, compress=False)
    yield client
    client.close()


def test_clickhouse_engine_through_the_http_interface(ch: clickhouse_connect.driver.Client) -> None:
    t = f"test_{uuid.uuid4().hex[:8]}"
    ch.command(f"CREATE TABLE {t} (event_id String, ts DateTime64(6, 'UTC'), tenant LowCardinality(String), "
               "ms Float64) ENGINE = ReplacingMergeTree ORDER BY event_id")
    ch.command(f"CREATE TABLE {t}_per_tenant (tenant String, n UInt64) ENGINE = SummingMergeTree ORDER BY tenant")
    ch.command(f"CREATE MATERIALIZED VIEW {t}_mv TO {t}_per_tenant AS SELECT tenant, count() AS n FROM {t} "
               "GROUP BY tenant")
    try:
        now = datetime.now(UTC)
        rows = [[f"e{i}", now, f"t{i % 3}", float(i)] for i in range(3000)]
        ch.insert(t, rows, column_names=["event_id", "ts", "tenant", "ms"])
        ch.insert(t, rows[:10], column_names=["event_id", "ts", "tenant", "ms"])  # a replay
        assert ch.query(f"SELECT count() FROM {t} FINAL").result_rows[0][0] == 3000
        p99 = ch.query(f"SELECT quantile(0.99)(ms) FROM {t} FINAL").result_rows[0][0]
        assert 2900 < p99 < 3000
        sums = ch.query(f"SELECT tenant, sum(n) FROM {t}_per_tenant GROUP BY tenant").result_rows
        per_tenant: dict[str, int] = {str(k): int(v) for k, v in sums}
        assert sum(per_tenant.values()) == 3010 and set(per_tenant) == {"t0", "t1", "t2"}
        assert ch.query(f"SELECT count() FROM {t} WHERE tenant = {{x:String}}",
                        parameters={"x": "t1"}).result_rows[0][0] > 0
        with pytest.raises(DatabaseError, match=r"UNKNOWN_TABLE|Unknown table"):
            ch.query("SELECT * FROM no_such_table_at_all")
    finally:
        for suffix in ("_mv", "_per_tenant", ""):
            ch.command(f"DROP TABLE IF EXISTS {t}{suffix}")


@pytest.fixture(params=["lancedb", "weaviate"])
def vector_store(request: pytest.FixtureRequest, stack: Settings,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[VectorStore]:
    store: VectorStore
    if request.param == "lancedb":
        store = LanceStore(tmp_path_factory.mktemp("lance"))
    elif resolve_vector_backend(stack) == "weaviate":
        store = WeaviateStore.connect(stack.weaviate_url, stack.weaviate_grpc_port)
    else:
        pytest.skip("conflux up recorded that Weaviate cannot be built here; LanceDB is the vector store")
    yield store
    store.close()


def _vec(*xs: float) -> list[float]:
    return list(xs) + [0.0] * (4 - len(xs))


def test_clickhouse_long_parameters_travel_as_form_fields(ch: clickhouse_connect.driver.Client) -> None:
    # clickhouse-connect moves parameters too long for a URL into a multipart/form-data body.
    ids = [f"id-{i:05d}-{'x' * 40}" for i in range(3000)]
    rows = ch.query("SELECT length({ids:Array(String)}), {n:UInt8}", parameters={"ids": ids, "n": 7}).result_rows
    assert rows == [(3000, 7)]


def test_vector_store_search_upsert_and_tenant_isolation(vector_store: VectorStore) -> None:
    col = f"test_{uuid.uuid4().hex[:8]}"
    vector_store.ensure_collection(col, 4)
    vector_store.ensure_collection(col, 4)  # idempotent
    try:
        vector_store.upsert(col, [
            Chunk("c1", "d1", "acme", "kafka keeps events", _vec(1, 0), "a.md"),
            Chunk("c2", "d1", "acme", "triton serves models", _vec(0, 1), "a.md"),
            Chunk("c1", "d9", "globex", "globex secret", _vec(1, 0.05), "g.md"),
        ])
        hits = vector_store.search(col, "acme", _vec(1, 0.1), 5)
        assert [h.chunk_id for h in hits] == ["c1", "c2"]
        assert hits[0].text == "kafka keeps events" and hits[0].score > hits[1].score
        assert all(h.document_id == "d1" for h in hits)  # never the other tenant's chunk
        vector_store.upsert(col, [Chunk("c1", "d1", "acme", "kafka keeps every event", _vec(1, 0), "a.md")])
        assert vector_store.count(col, "acme") == 2
        assert vector_store.search(col, "acme", _vec(1, 0), 1)[0].text == "kafka keeps every event"
        vector_store.delete_document(col, "acme", "d1")
        assert vector_store.count(col, "acme") == 0 and vector_store.count(col, "globex") == 1
        # Ids are compared whole: "acme" is a word of "acme-corp", "d1" of "d1-v2" (Weaviate's default `word`
        # tokenization matched them, so one tenant read and deleted another's chunks).
        vector_store.upsert(col, [Chunk("c1", "d1-v2", "acme-corp", "corp secret", _vec(1, 0), "s.md"),
                                  Chunk("c1", "d1", "acme", "acme note", _vec(0, 1), "n.md")])
        assert [h.text for h in vector_store.search(col, "acme", _vec(1, 0), 5)] == ["acme note"]
        assert vector_store.count(col, "acme") == 1 and vector_store.count(col, "acme-corp") == 1
        vector_store.delete_document(col, "acme-corp", "d1")  # a document acme-corp does not have
        assert vector_store.count(col, "acme-corp") == 1
        vector_store.delete_document(col, "acme", "d1")
        assert vector_store.count(col, "acme") == 0 and vector_store.count(col, "acme-corp") == 1
    finally:
        vector_store.drop_collection(col)


def test_demo_runs_against_the_stack(stack: Settings) -> None:
    out = subprocess.run([sys.executable, "-m", "conflux.cli", "demo"], capture_output=True, text=True,
                         check=False, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "demo complete" in out.stderr


async def test_triton_embeds_with_dynamic_batching(stack: Settings) -> None:
    import asyncio

    import numpy as np
    import tritonclient.grpc.aio as grpcclient

    client = grpcclient.InferenceServerClient(stack.triton_grpc_url)
    sentences = [f"document {i} about streaming inference" for i in range(48)]

    async def embed(text: str) -> np.ndarray:  # type: ignore[type-arg]
        inp = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
        result = await client.infer("minilm_embed", [inp])
        return result.as_numpy("EMBEDDING")[0]  # type: ignore[no-any-return]

    try:
        before = await client.get_inference_statistics("minilm_embed", as_json=True)
        vectors = await asyncio.gather(*(embed(s) for s in sentences))
        after = await client.get_inference_statistics("minilm_embed", as_json=True)
    finally:
        await client.close()
    assert all(v.shape == (384,) and abs(float(np.linalg.norm(v)) - 1.0) < 1e-4 for v in vectors)
    assert float(vectors[0] @ vectors[1]) > 0.8  # near-identical sentences

    def executions(stats: dict) -> int:  # type: ignore[type-arg]
        return int(stats["model_stats"][0].get("execution_count", 0))

    # 48 concurrent requests served in fewer forward passes: Triton merged them into batches.
    assert executions(after) - executions(before) < len(sentences)


async def test_smollm2_streams_a_real_answer(stack: Settings) -> None:
    from conflux.llm import Message, render_chatml

    prompt = render_chatml([Message("user", "What is 2+2? Answer with the number.")])
    pieces = [p async for p in stream_generate(stack.triton_grpc_url, "smollm2", prompt, 24, timeout_s=60)]
    answer = "".join(p.text for p in pieces)
    assert "4" in answer
    assert 1 < len(pieces) <= 24  # one response per token, capped by max_tokens
    assert pieces[0].elapsed_ms < pieces[-1].elapsed_ms


async def test_smollm2_non_streaming_model_answers_in_one_response(stack: Settings) -> None:
    from conflux.inference import generate
    from conflux.llm import Message, render_chatml

    prompt = render_chatml([Message("user", "Write one sentence about the sea.")])
    text = await generate(stack.triton_grpc_url, "smollm2_generate", prompt, 24)
    assert len(text.split()) >= 3
