"""OpenTelemetry spans of the hops, off by default.

Every message carries a W3C `traceparent` header from the request that started it (a settlement's
hops all carry the claim's), so a span per handled record, started under that context, joins
every hop of one claim in one trace. `YIBAO_OTEL=console` prints finished spans;
`YIBAO_OTEL=otlp` exports them over OTLP/HTTP (install `opentelemetry-exporter-otlp-proto-http` and
set the usual OTEL_EXPORTER_OTLP_* variables). Unset: no tracer, no cost.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_tracer: trace.Tracer | None = None
_PROPAGATOR = TraceContextTextMapPropagator()


def configure(service: str, exporter: SpanExporter | None = None, kind: str = "") -> None:
    """Turn tracing on for this process: with `exporter` (tests), or as `kind` (YIBAO_OTEL) says. Once."""
    global _tracer
    if _tracer is not None or (exporter is None and not kind):
        return
    provider = TracerProvider(resource=Resource.create({"service.name": f"yibao-{service}"}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    elif kind == "console":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    elif kind == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise SystemExit("YIBAO_OTEL=otlp needs `pip install opentelemetry-exporter-otlp-proto-http`") from None
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        raise SystemExit(f"YIBAO_OTEL={kind!r}: use console or otlp, or leave it unset")
    _tracer = provider.get_tracer("yibao")


def _context_and_attributes(group: str, topic: str, headers: Mapping[str, str], partition: int,
                            offset: int) -> tuple[Any, dict[str, Any]]:
    """The trace a record's traceparent names, and the span attributes of its handling."""
    parent = _PROPAGATOR.extract({"traceparent": headers["traceparent"]}) if "traceparent" in headers else None
    return parent, {"messaging.system": "kafka", "messaging.destination.name": topic,
                    "messaging.consumer.group.name": group, "messaging.kafka.partition": partition,
                    "messaging.kafka.offset": offset, "yibao.msgid": headers.get("ce_correlationid", "")}


def handling(group: str, topic: str, headers: Mapping[str, str], partition: int, offset: int) -> Any:
    """The span of one record's handling, under the trace its traceparent names (a no-op when off)."""
    if _tracer is None:
        return nullcontext()
    parent, attributes = _context_and_attributes(group, topic, headers, partition, offset)
    return _tracer.start_as_current_span(f"{topic} process", context=parent, kind=SpanKind.CONSUMER,
                                         attributes=attributes)


@contextmanager
def handling_many(group: str, topic: str, records: Sequence[tuple[Any, Any]]) -> Iterator[None]:
    """One span per (ConsumerRecord, Incoming) of a batch handled together, each under its own
    trace, all ending with the batch (a no-op when off: nothing is built on the hot path)."""
    if _tracer is None:
        yield
        return
    spans = []
    for rec, msg in records:
        parent, attributes = _context_and_attributes(group, topic, msg.headers, rec.partition, rec.offset)
        spans.append(_tracer.start_span(f"{topic} process", context=parent, kind=SpanKind.CONSUMER,
                                        attributes=attributes | {"yibao.batch_size": len(records)}))
    try:
        yield
    finally:
        for span in spans:
            span.end()


def reset() -> None:
    """Tracing off again (tests)."""
    global _tracer
    _tracer = None
