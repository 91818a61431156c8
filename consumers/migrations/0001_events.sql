-- Every event of every topic, one row per event id. The envelope is typed; the whole record is kept as
-- JSON in `body` for metrics, lineage and training-data export.
-- ReplacingMergeTree is the backstop for exactly-once: the sink already drops ids it has stored, and a
-- duplicate that slips in (a partition changing owner mid-batch) disappears on merge / with FINAL.
CREATE TABLE IF NOT EXISTS events
(
    event_id        String,
    event_type      LowCardinality(String),
    topic           LowCardinality(String),
    event_time      DateTime64(6, 'UTC'),
    tenant_id       LowCardinality(String),
    conversation_id String,
    request_id      String,
    traceparent     String,
    schema_version  UInt16,
    producer        LowCardinality(String),
    body            String,
    kafka_partition UInt16,
    kafka_offset    UInt64,
    ingested_at     DateTime64(3, 'UTC') DEFAULT now64(3),
    INDEX idx_request request_id TYPE bloom_filter GRANULARITY 4,
    INDEX idx_time event_time TYPE minmax GRANULARITY 1
)
ENGINE = ReplacingMergeTree(ingested_at)
PARTITION BY toYYYYMM(event_time)
ORDER BY event_id;
