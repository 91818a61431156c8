"""Conflux: the shared package for config, Kafka wiring, Avro serde, telemetry and the local stack."""

__version__ = "0.1.0"
