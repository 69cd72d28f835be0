"""The pipeline benchmark's span breakdown, on spans as a collector receives them (OTLP)."""

from __future__ import annotations

from opentelemetry.proto.trace.v1.trace_pb2 import Span

from bench.pipeline import span_breakdown

MS = 1_000_000


def _span(name: str, span_id: int, parent: int, start_ms: int, end_ms: int, trace: int) -> Span:
    return Span(
        name=name,
        trace_id=trace.to_bytes(16, "big"),
        span_id=span_id.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        start_time_unix_nano=start_ms * MS,
        end_time_unix_nano=end_ms * MS,
    )


def test_time_per_kind_of_span_and_per_hop() -> None:
    spans = []
    for trace, hop in ((1, 2), (2, 4)):
        spans += [
            _span("chorus request", 1, 0, 0, 50, trace),
            _span("publish chorus.request", 2, 1, 1, 3, trace),
            _span("planner handle", 3, 2, 1 + hop, 20, trace),
            _span("publish chorus.event", 4, 3, 10, 11, trace),
            _span("publish chorus.event", 5, 3, 12, 14, trace),
        ]
    spans.append(_span("selector sweep", 9, 0, 0, 5, 3))  # no request of its own: left out
    breakdown = span_breakdown(spans)
    assert breakdown["chorus request"] == {"median_ms_per_request": 50.0, "requests": 2.0}
    assert breakdown["publish chorus.event"]["median_ms_per_request"] == 3.0  # summed per request
    assert breakdown["hop to planner"]["median_ms_per_request"] == 3.0  # median of 2 and 4
    assert "selector sweep" not in breakdown
