"""One Kafka hop, Faust agent vs plain aiokafka forwarder: the cost of the chain's framework per stage.

Messages go to bench.hop.in; a Faust agent (producers/hop_app.py, its own process) and an aiokafka loop
(its own process) each forward them to their output topic; the latency from send to receipt on each
output is measured, sequentially and with 8 in flight. Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from conflux.config import Settings
from producers.bench import pct

TOPICS = ("bench.hop.in", "bench.hop.faust", "bench.hop.plain")


async def plain_forwarder(bootstrap: str) -> None:
    consumer = AIOKafkaConsumer("bench.hop.in", bootstrap_servers=bootstrap, group_id="conflux-hop-plain",
                                auto_offset_reset="latest", fetch_max_wait_ms=100)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    await consumer.start()
    await producer.start()
    try:
        async for msg in consumer:
            await producer.send_and_wait("bench.hop.plain", value=msg.value, key=msg.key)
    finally:
        await consumer.stop()
        await producer.stop()


async def measure(bootstrap: str, n: int, in_flight: int) -> dict[str, dict[str, float]]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    consumer = AIOKafkaConsumer("bench.hop.faust", "bench.hop.plain", bootstrap_servers=bootstrap,
                                auto_offset_reset="latest", fetch_max_wait_ms=100, group_id=None)
    await producer.start()
    await consumer.start()
    await consumer.seek_to_end()
    sent: dict[bytes, float] = {}
    got: dict[str, list[float]] = {"faust": [], "plain": []}
    done = asyncio.Event()

    async def receive() -> None:
        async for msg in consumer:
            which = "faust" if msg.topic == "bench.hop.faust" else "plain"
            got[which].append((time.perf_counter() - sent[msg.value]) * 1000)
            if len(got["faust"]) >= n and len(got["plain"]) >= n:
                done.set()
                return

    reader = asyncio.create_task(receive())
    sem = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with sem:
            value = f"{in_flight}-{i}-{time.time_ns()}".encode()
            sent[value] = time.perf_counter()
            await producer.send_and_wait("bench.hop.in", value=value)
            await asyncio.sleep(0.02)  # leave room for both forwarders to answer before the next send

    await asyncio.gather(*(one(i) for i in range(n)))
    with contextlib.suppress(TimeoutError):  # reported below as fewer messages received than sent
        await asyncio.wait_for(done.wait(), 60)
    reader.cancel()
    await producer.stop()
    await consumer.stop()
    return {k: {"p50_ms": pct(v, 0.5), "p99_ms": pct(v, 0.99), "received": len(v), "sent": n}
            for k, v in got.items()}


async def run(n: int) -> dict[str, Any]:
    settings = Settings.from_env()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    existing = set(await admin.list_topics())
    await admin.create_topics([NewTopic(t, 1, 1) for t in TOPICS if t not in existing])
    await admin.close()
    log = (settings.logs_dir / "hop-bench-faust.log").open("ab")
    faust_proc = subprocess.Popen([sys.executable, "-m", "faust", "-A", "producers.hop_app", "worker", "-l", "warn",
                                   "--without-web"], stdout=log, stderr=log)
    plain = subprocess.Popen([sys.executable, "-c", "import asyncio,sys; from producers.hop_bench import "
                              "plain_forwarder; asyncio.run(plain_forwarder(sys.argv[1]))", settings.kafka_bootstrap])
    try:
        await asyncio.sleep(30)  # both joined their groups (Faust takes longer)
        return {"sequential": await measure(settings.kafka_bootstrap, n, 1),
                "in_flight_8": await measure(settings.kafka_bootstrap, n, 8),
                "conditions": f"{n} messages per level, 1 partition, acks=all, both forwarders in own processes, "
                              "local Kafka 3.9.1, 2 cores shared with the running stack"}
    finally:
        for p in (faust_proc, plain):
            p.terminate()
            p.wait(timeout=30)
        log.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--messages", type=int, default=200)
    print(json.dumps(asyncio.run(run(ap.parse_args().messages)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
