"""Sink throughput: with the sink stopped, N events go to chat.feedback; the sink is started and its rate is
rows stored / (last - first `ingested_at`). Prints JSON; run with the stack up (`conflux up`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
import uuid

from conflux.clickhouse import clickhouse_client
from conflux.config import Settings
from conflux.kafka import make_producer
from conflux.schemas import SchemaRegistry
from conflux.serde import AvroSerde, new_envelope


async def produce(settings: Settings, tag: str, n: int) -> float:
    serde = AvroSerde(SchemaRegistry())
    producer = make_producer(settings.kafka, linger_ms=20, max_batch_size=1024 * 1024)
    await producer.start()
    t0 = time.perf_counter()
    try:
        futures = []
        for i in range(n):
            env = new_envelope(tenant_id="bench", conversation_id=f"c{i}", request_id=f"r{i}", producer=tag)
            value = serde.encode("feedback_given", {"envelope": env, "response_id": f"r{i}", "kind": "RATING",
                                                    "thumbs_up": True, "rating": 1 + i % 5, "comment": "fine",
                                                    "corrected_answer": None})
            futures.append(await producer.send("chat.feedback", value=value, key=f"k{i % 64}".encode()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return time.perf_counter() - t0


def run_once(settings: Settings, n: int) -> dict[str, float]:
    from conflux.stack import manager

    tag = f"sinkbench-{uuid.uuid4().hex[:8]}"
    # The backlog is built while the sink is stopped, so its rate is measured, not the producer's.
    manager.down(settings, lambda m: None, ["sink"])
    produce_s = asyncio.run(produce(settings, tag, n))
    manager.up(settings, lambda m: None, ["sink"])
    ch = clickhouse_client(settings)
    try:
        deadline = time.monotonic() + 600
        stored = 0
        while time.monotonic() < deadline:
            stored = int(ch.query("SELECT count() FROM events WHERE producer = {t:String}",
                                  parameters={"t": tag}).result_rows[0][0])
            if stored >= n:
                break
            time.sleep(0.5)
        first, last = ch.query("SELECT min(ingested_at), max(ingested_at) FROM events WHERE producer = {t:String}",
                               parameters={"t": tag}).result_rows[0]
    finally:
        ch.close()
    span = max((last - first).total_seconds(), 1e-3)
    return {"events": n, "stored": stored, "produce_s": round(produce_s, 2), "store_span_s": round(span, 2),
            "events_per_s": round(stored / span)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    settings = Settings.from_env()
    runs = [run_once(settings, args.events) for _ in range(args.runs)]
    rates = [r["events_per_s"] for r in runs]
    print(json.dumps({"sink_events_per_s": {"median": statistics.median(rates), "min": min(rates),
                                            "max": max(rates)},
                      "runs": runs,
                      "conditions": "backlog produced to chat.feedback (8 partitions) while the sink was stopped, "
                      "then 1 sink process, batches of 10,000 rows or 1 s, chdb behind the HTTP endpoint, 2 cores"},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
