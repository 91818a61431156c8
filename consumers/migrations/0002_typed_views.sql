-- Typed tables fed by materialized views, for the metrics API: responses and completed generations.
-- They are ReplacingMergeTree on event_id like `events`, so reading them FINAL stays exactly-once even if a
-- duplicate ever reaches `events` (summing views would count it twice).
CREATE TABLE IF NOT EXISTS responses
(
    event_id String, tenant_id LowCardinality(String), request_id String, event_time DateTime64(6, 'UTC'),
    model LowCardinality(String), finish_reason LowCardinality(String), blocked UInt8, error String,
    latency_ms Float64, prompt_tokens UInt32, completion_tokens UInt32
)
ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(event_time) ORDER BY event_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS responses_mv TO responses AS
SELECT event_id, tenant_id, request_id, event_time, JSONExtractString(body, 'model') AS model,
       JSONExtractString(body, 'finish_reason') AS finish_reason, JSONExtractBool(body, 'blocked') AS blocked,
       JSONExtractString(body, 'error') AS error, JSONExtractFloat(body, 'latency_ms') AS latency_ms,
       JSONExtractUInt(body, 'prompt_tokens') AS prompt_tokens,
       JSONExtractUInt(body, 'completion_tokens') AS completion_tokens
FROM events WHERE event_type = 'response_delivered';

CREATE TABLE IF NOT EXISTS completions
(
    event_id String, tenant_id LowCardinality(String), request_id String, event_time DateTime64(6, 'UTC'),
    model LowCardinality(String), ttft_ms Nullable(Float64), duration_ms Float64, prompt_tokens UInt32,
    completion_tokens UInt32, cost_usd Float64, error String
)
ENGINE = ReplacingMergeTree PARTITION BY toYYYYMM(event_time) ORDER BY event_id;

CREATE MATERIALIZED VIEW IF NOT EXISTS completions_mv TO completions AS
SELECT event_id, tenant_id, request_id, event_time, JSONExtractString(body, 'model') AS model,
       JSONExtract(body, 'ttft_ms', 'Nullable(Float64)') AS ttft_ms,
       JSONExtractFloat(body, 'duration_ms') AS duration_ms,
       JSONExtractUInt(body, 'prompt_tokens') AS prompt_tokens,
       JSONExtractUInt(body, 'completion_tokens') AS completion_tokens,
       JSONExtractFloat(body, 'cost_usd') AS cost_usd, JSONExtractString(body, 'error') AS error
FROM events WHERE event_type = 'inference_completed';

-- Backfill what `events` held before the views existed (a row the views also wrote is merged away).
INSERT INTO responses
SELECT event_id, tenant_id, request_id, event_time, JSONExtractString(body, 'model'),
       JSONExtractString(body, 'finish_reason'), JSONExtractBool(body, 'blocked'), JSONExtractString(body, 'error'),
       JSONExtractFloat(body, 'latency_ms'), JSONExtractUInt(body, 'prompt_tokens'),
       JSONExtractUInt(body, 'completion_tokens')
FROM events FINAL WHERE event_type = 'response_delivered';

INSERT INTO completions
SELECT event_id, tenant_id, request_id, event_time, JSONExtractString(body, 'model'),
       JSONExtract(body, 'ttft_ms', 'Nullable(Float64)'), JSONExtractFloat(body, 'duration_ms'),
       JSONExtractUInt(body, 'prompt_tokens'), JSONExtractUInt(body, 'completion_tokens'),
       JSONExtractFloat(body, 'cost_usd'), JSONExtractString(body, 'error')
FROM events FINAL WHERE event_type = 'inference_completed';
