"""OpenTelemetry setup and W3C trace context carried in Kafka headers.

Every event travels with a `traceparent` header (and `tracestate` when set), so one request's spans join
up across every agent, whatever language consumes the topic.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

Headers = list[tuple[str, bytes]]
_PROPAGATOR = TraceContextTextMapPropagator()


class _HeaderSetter(Setter[Headers]):
    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier[:] = [(k, v) for k, v in carrier if k != key]
        carrier.append((key, value.encode()))


class _HeaderGetter(Getter[Sequence[tuple[str, bytes]]]):
    def get(self, carrier: Sequence[tuple[str, bytes]], key: str) -> list[str] | None:
        values = [v.decode("ascii", "replace") for k, v in carrier if k == key and v is not None]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, bytes]]) -> list[str]:
        return [k for k, _ in carrier]


def setup_tracing(service_name: str, exporter: SpanExporter | None = None) -> TracerProvider:
    """A provider for this process. Spans are exported to the exporter given, else over OTLP/HTTP when the
    standard OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set, else nowhere (no cost)."""
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    if exporter is None and (os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                             or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()  # reads the endpoint, headers and timeout from the standard variables
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=2048))
    return provider


def inject_headers(headers: Headers | None = None, context: Context | None = None) -> Headers:
    """Headers with the current (or given) span's trace context added."""
    out: Headers = list(headers or [])
    _PROPAGATOR.inject(out, context=context, setter=_HeaderSetter())
    return out


def extract_context(headers: Iterable[tuple[str, bytes]] | None) -> Context:
    """The trace context a message was produced under (empty context if it carried none)."""
    return _PROPAGATOR.extract(list(headers or []), getter=_HeaderGetter())


def traceparent_of(headers: Headers) -> str | None:
    for k, v in headers:
        if k == "traceparent":
            return v.decode("ascii", "replace")
    return None


def current_traceparent() -> str | None:
    return traceparent_of(inject_headers())


__all__ = ["Headers", "extract_context", "inject_headers", "setup_tracing", "trace", "traceparent_of"]
