"""Settings from the environment, and W3C trace context through Kafka headers."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from conflux.config import Settings
from conflux.errors import ConfigError
from conflux.telemetry import extract_context, inject_headers, setup_tracing, traceparent_of


def test_defaults_are_loopback() -> None:
    s = Settings.from_env({})
    assert s.kafka_bootstrap == "127.0.0.1:9092"
    assert s.clickhouse_url == "http://127.0.0.1:8123"
    assert s.redis_url.startswith("redis://127.0.0.1:")


def test_cluster_endpoints_come_from_the_environment() -> None:
    s = Settings.from_env({"CONFLUX_KAFKA_BOOTSTRAP": "k1:9092,k2:9092", "CONFLUX_KAFKA_PORT": "19092",
                           "CONFLUX_CLICKHOUSE_URL": "https://ch.example:8443"})
    assert s.kafka_bootstrap == "k1:9092,k2:9092"
    assert s.kafka_controller_port == 19093
    assert s.clickhouse_url == "https://ch.example:8443"


@pytest.mark.parametrize(("env", "msg"), [({"CONFLUX_KAFKA_PORT": "ninety"}, "CONFLUX_KAFKA_PORT"),
                                          ({"CONFLUX_VECTOR_BACKEND": "faiss"}, "CONFLUX_VECTOR_BACKEND")])
def test_bad_settings_raise_config_error(env: dict[str, str], msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        Settings.from_env(env)


def test_trace_context_round_trips_through_headers() -> None:
    tracer = setup_tracing("test").get_tracer("t")
    with tracer.start_as_current_span("produce") as span:
        headers = inject_headers([("other", b"x")])
        sent = span.get_span_context()
    assert ("other", b"x") in headers
    tp = traceparent_of(headers)
    assert tp is not None and f"{sent.trace_id:032x}" in tp
    received = trace.get_current_span(extract_context(headers)).get_span_context()
    assert received.trace_id == sent.trace_id and received.span_id == sent.span_id


def test_no_span_means_no_header_and_an_empty_context() -> None:
    assert traceparent_of(inject_headers()) is None
    assert not trace.get_current_span(extract_context(None)).get_span_context().is_valid


def test_spans_go_out_over_otlp_when_the_standard_variable_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    import http.server
    import threading

    received: list[tuple[str, int]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            received.append((self.path, len(body)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.HTTPServer(("127.0.0.1", 0), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        provider = setup_tracing("otlp-test")
        with provider.get_tracer("t").start_as_current_span("stage"):
            pass
        assert provider.force_flush(10_000)
        provider.shutdown()
    finally:
        server.shutdown()
    assert received and received[0][0] == "/v1/traces" and received[0][1] > 0
