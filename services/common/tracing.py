"""OpenTelemetry tracing: one trace per request across every process, carried by `traceparent`.

Spans: the front door's request, each publish (producer) and the handling of each message
(consumer, a child of its publish: one bus hop), each task an executor runs, each LLM call.
Export follows the standard variables (`OTEL_TRACES_EXPORTER`, `OTEL_EXPORTER_OTLP_*`,
`OTEL_BSP_*`, `OTEL_SERVICE_NAME`, `OTEL_SDK_DISABLED`) and is off unless one asks for it.
Off, spans are not recorded (the sampler drops them), yet their context still travels, so
logs keep the request's trace id and a process that exports joins the caller's trace. Off, a
hop inside a trace makes no span at all (one would be dropped unseen): the message carries on
the context it came with, which costs a fraction of starting and ending spans per message.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import Span, SpanKind, Tracer
from prometheus_client import Counter

from services.common.settings import SettingsError, int_setting

log = logging.getLogger(__name__)
SPANS_DROPPED = Counter(
    "chorus_spans_dropped_total", "Spans the exporter could not deliver (it was down): dropped."
)
_TRACEPARENT = "traceparent"
_tracer: Tracer | None = None
_recording = False  # whether spans may be recorded at all (an exporter, or a test's provider)


def use_provider(provider: TracerProvider) -> None:
    """Makes `provider` the source of every span this process makes (tests: in-memory)."""
    global _tracer, _recording
    _tracer = provider.get_tracer("chorus")
    _recording = provider.sampler is not ALWAYS_OFF


def configure_tracing(service: str, environ: Mapping[str, str]) -> TracerProvider:
    """The provider the `OTEL_*` variables ask for; the caller shuts it down on exit.

    `environ` decides whether and where to; the SDK's exporters read their own variables
    (`OTEL_EXPORTER_OTLP_HEADERS`, timeouts) from the process environment."""
    exporters = _exporters(environ)
    if not exporters:
        provider = TracerProvider(sampler=ALWAYS_OFF)
    else:
        name = environ.get("OTEL_SERVICE_NAME") or f"chorus-{service}"
        queue = int_setting(environ, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        if queue < 1:
            raise SettingsError("OTEL_BSP_MAX_QUEUE_SIZE must be at least 1")
        provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
        for exporter in exporters:
            provider.add_span_processor(DroppingProcessor(exporter, queue))
    use_provider(provider)
    return provider


def _exporters(environ: Mapping[str, str]) -> list[SpanExporter]:
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return []
    names = environ.get("OTEL_TRACES_EXPORTER", "")
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if not names:  # the standard's default is otlp; ours is off unless a collector is named
        names = "otlp" if endpoint else "none"
    return [_exporter(name.strip()) for name in names.split(",") if name.strip() != "none"]


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as e:
            raise SettingsError(
                "OTEL_TRACES_EXPORTER=otlp needs the OTLP exporter: pip install 'chorus[otlp]'"
            ) from e
        return OTLPSpanExporter()
    raise SettingsError(f"OTEL_TRACES_EXPORTER: {name!r} is not one of otlp, console, none")


class CountingExporter(SpanExporter):
    """Counts the spans an exporter failed to deliver (dropped, never retried here), and
    keeps the tally of spans handed to the queue and not yet exported."""

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner
        self.pending = 0  # changed from two threads; an estimate is all the bound needs

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self._inner.export(spans)
        except Exception as e:  # a broken exporter must not end the export thread
            log.warning("span export failed: %s", e)
            result = SpanExportResult.FAILURE
        self.pending -= len(spans)
        if result != SpanExportResult.SUCCESS:
            SPANS_DROPPED.inc(len(spans))
        return result

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


class DroppingProcessor(BatchSpanProcessor):
    """The SDK's batch processor (a queue and an export thread: work never waits for the
    collector) that counts the spans it drops when the queue is full."""

    def __init__(self, exporter: SpanExporter, max_queue_size: int) -> None:
        self._exporter = CountingExporter(exporter)
        batch = max_queue_size if max_queue_size < 512 else None  # the SDK batches 512
        super().__init__(self._exporter, max_queue_size=max_queue_size, max_export_batch_size=batch)
        self._limit = max_queue_size

    def on_end(self, span: ReadableSpan) -> None:
        if self._exporter.pending >= self._limit:
            SPANS_DROPPED.inc()
            return
        self._exporter.pending += 1
        super().on_end(span)


def tracer() -> Tracer:
    global _tracer
    if _tracer is None:  # a process that never configured tracing: contexts only, no export
        use_provider(TracerProvider(sampler=ALWAYS_OFF))
        assert _tracer is not None
    return _tracer


def extract(traceparent: str | None) -> Context:
    """The remote parent a `traceparent` names; an empty context when it is missing or
    malformed, so the work starts a trace of its own."""
    return propagate.extract({_TRACEPARENT: traceparent} if traceparent else {})


@contextmanager
def span(
    name: str, *, current: bool = True, attributes: Mapping[str, Any] | None = None
) -> Iterator[Span]:
    """A span of work inside this process, a child of the current one. `current=False` for
    work that yields to its caller midway (a generator): the span is not made current."""
    if not _recording and _in_trace():
        yield trace.get_current_span()
        return
    if current:
        with tracer().start_as_current_span(name, attributes=attributes) as made:
            yield made
        return
    made = tracer().start_span(name, attributes=attributes)
    try:
        yield made
    except Exception as e:
        made.record_exception(e)
        made.set_status(trace.StatusCode.ERROR, str(e))
        raise
    finally:
        made.end()


@contextmanager
def publishing(subject: str, headers: dict[str, str]) -> Iterator[None]:
    """The producer side of a bus hop: its context goes into the message's headers."""
    if not _recording and _in_trace():
        propagate.inject(headers)
        yield
        return
    family = ".".join(subject.split(".")[:2])  # a name without ids: `publish chorus.event`
    with tracer().start_as_current_span(
        f"publish {family}",
        kind=SpanKind.PRODUCER,
        attributes={"messaging.system": "nats", "messaging.destination.name": subject},
    ):
        propagate.inject(headers)
        yield


@contextmanager
def handling(stage: str, subject: str, traceparent: str | None) -> Iterator[Span]:
    """The consumer side of a bus hop: the stage's handling of one message, a child of the
    publish that sent it."""
    if not _recording:
        parent = extract(traceparent)
        if (remote := trace.get_current_span(parent)).get_span_context().is_valid:
            token = context.attach(parent)
            try:
                yield remote
            finally:
                context.detach(token)
            return
    with tracer().start_as_current_span(
        f"{stage} handle",
        context=extract(traceparent),
        kind=SpanKind.CONSUMER,
        attributes={"messaging.system": "nats", "messaging.destination.name": subject},
    ) as current:
        yield current


@contextmanager
def joined(traceparent: str, name: str) -> Iterator[None]:
    """Work done outside a request's messages (a sweep) joins that request's trace: a span
    `name` under the span that `traceparent` names, unless the current span is in it already."""
    parent = extract(traceparent)
    remote = trace.get_current_span(parent).get_span_context()
    if not remote.is_valid or format(remote.trace_id, "032x") == trace_id():
        yield
        return
    with tracer().start_as_current_span(name, context=parent):
        yield


def _in_trace() -> bool:
    return trace.get_current_span().get_span_context().is_valid


def current_traceparent() -> str:
    """The `traceparent` of the current span, for work that joins it later."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier.get(_TRACEPARENT, "")


def annotate(**attributes: Any) -> None:
    """Adds `chorus.<name>` attributes to the current span."""
    current = trace.get_current_span()
    if current.is_recording():
        for key, value in attributes.items():
            current.set_attribute(f"chorus.{key}", value)


def trace_id() -> str:
    """The current trace's id as 32 hex digits; empty outside any trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
