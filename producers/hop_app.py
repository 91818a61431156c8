"""A one-agent Faust app for producers/hop_bench.py: forwards bench.hop.in -> bench.hop.faust, nothing else."""

from __future__ import annotations

import os

import faust

app = faust.App("conflux-hop-bench", broker=f"kafka://{os.environ.get('CONFLUX_KAFKA_BOOTSTRAP', '127.0.0.1:9092')}",
                web_enabled=False, topic_partitions=1, broker_session_timeout=10, broker_heartbeat_interval=1,
                consumer_auto_offset_reset="latest")
source = app.topic("bench.hop.in", key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
sink = app.topic("bench.hop.faust", key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


@app.agent(source, concurrency=8)
async def forward(stream):  # type: ignore[no-untyped-def]
    async for event in stream.events():
        await sink.send(key=event.key, value=event.value)
