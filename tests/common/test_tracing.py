"""Tracing's own rules: context travels when export is off, bad input starts a fresh trace,
a collector that is down costs dropped (and counted) spans, never a wait."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.common import tracing
from services.common.settings import SettingsError

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _dropped() -> float:
    return float(tracing.SPANS_DROPPED._value.get())


def test_off_by_default_yet_the_trace_travels() -> None:
    tracing.configure_tracing("test", {})
    headers: dict[str, str] = {}
    with (
        tracing.handling("planner", "chorus.request", PARENT) as span,
        tracing.publishing("chorus.plan", headers),
    ):
        assert not span.is_recording()  # nothing is recorded or exported
        assert tracing.trace_id() == PARENT.split("-")[1]  # logs still carry it
    assert headers["traceparent"].split("-")[1] == PARENT.split("-")[1]


@pytest.mark.parametrize("bad", [None, "", "garbage", "00-xyz-00f067aa0ba902b7-01", "01-" * 30])
def test_a_malformed_or_missing_traceparent_starts_a_new_trace(
    spans: InMemorySpanExporter, bad: str | None
) -> None:
    with tracing.handling("planner", "chorus.request", bad):
        new = tracing.trace_id()
    (span,) = spans.get_finished_spans()
    assert span.parent is None and len(new) == 32 and new != PARENT.split("-")[1]


def test_a_publish_is_the_parent_of_its_handling(spans: InMemorySpanExporter) -> None:
    headers: dict[str, str] = {}
    with tracing.handling("planner", "chorus.request", PARENT), tracing.publishing("x", headers):
        pass
    with tracing.handling("selector", "x", headers["traceparent"]):
        pass
    publish, planner, selector = spans.get_finished_spans()
    assert selector.parent is not None and publish.context is not None
    assert selector.parent.span_id == publish.context.span_id
    assert {s.context.trace_id for s in (publish, planner, selector) if s.context} == {
        int(PARENT.split("-")[1], 16)
    }


def test_exporter_settings() -> None:
    with pytest.raises(SettingsError, match="OTEL_TRACES_EXPORTER"):
        tracing.configure_tracing("test", {"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(SettingsError, match="OTEL_BSP_MAX_QUEUE_SIZE"):
        tracing.configure_tracing(
            "test", {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_MAX_QUEUE_SIZE": "-1"}
        )
    tracing.configure_tracing("test", {"OTEL_SDK_DISABLED": "true"})


def test_a_collector_that_is_down_costs_counted_drops() -> None:
    # Nothing listens on port 9: every export fails at once.
    provider = tracing.configure_tracing(
        "test",
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_EXPORTER_OTLP_TIMEOUT": "1"},
    )
    before = _dropped()
    with tracing.span("work"):
        pass
    provider.force_flush()
    provider.shutdown()
    assert _dropped() == before + 1
    tracing.configure_tracing("test", {})


class _Hung(SpanExporter):
    """A collector that accepts the connection and never answers (until released)."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(30)
        return SpanExportResult.SUCCESS


def test_a_hung_collector_never_holds_up_work() -> None:
    hung = _Hung()
    provider = TracerProvider()
    provider.add_span_processor(tracing.DroppingProcessor(hung, max_queue_size=10))
    tracing.use_provider(provider)
    before = _dropped()
    for _ in range(100):  # would block here if a span waited for its export
        with tracing.span("work"):
            pass
    hung.release.set()
    provider.shutdown()
    # Ten spans wait (in the queue or in the hung export); every later one is dropped.
    assert _dropped() - before == 90
    tracing.configure_tracing("test", {})


def test_off_a_hop_passes_the_context_on_as_it_came() -> None:
    """Off, no span is made only to be dropped: a message goes on with its caller's context,
    the sampled flag included, so that an exporting process further on joins that trace."""
    tracing.configure_tracing("test", {})
    headers: dict[str, str] = {}
    with (
        tracing.handling("selector", "chorus.result", PARENT),
        tracing.span("task canny-control"),
        tracing.publishing("chorus.task", headers),
    ):
        pass
    assert headers["traceparent"] == PARENT
