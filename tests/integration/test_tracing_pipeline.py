"""One request is one connected trace: every stage, bus hop, task and LLM call, on real NATS."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from chorus.v1 import chorus_pb2_grpc
from chorus.v1.chorus_pb2 import ArtifactChunk
from chorus.v1.messages_pb2 import ChatMessage, ChatRequest, TaskStatus
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.integration.stack import CANNY_ONLY, running_stack
from tests.support import ScriptedLLM, square_png

CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
CHAIN = (
    '[{"task": "canny-control", "id": 0, "dep": [], "args": {"image": "photo.png"}},'
    ' {"task": "canny-control", "id": 1, "dep": [0], "args": {"image": "<GENERATED>-0"}}]'
)


async def _chat(addr: str, metadata: tuple[tuple[str, str], ...]) -> None:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = chorus_pb2_grpc.ChorusStub(channel)

        async def chunks() -> AsyncIterator[ArtifactChunk]:
            yield ArtifactChunk(name="photo.png", media_type="image/png", data=square_png())

        photo = await stub.UploadArtifact(chunks())
        message = ChatMessage(role="user", content="edges of photo.png twice", artifacts=[photo])
        response = await stub.Chat(ChatRequest(messages=[message]), metadata=metadata)
    assert [r.status for r in response.results] == [TaskStatus.TASK_STATUS_SUCCEEDED] * 2


def _request_spans(spans: InMemorySpanExporter) -> list[ReadableSpan]:
    (root,) = [s for s in spans.get_finished_spans() if s.name == "chorus request"]
    assert root.context is not None
    return [s for s in spans.get_finished_spans() if s.context.trace_id == root.context.trace_id]


async def test_one_request_is_one_connected_trace(
    nats_url: str, scripted_llm: ScriptedLLM, spans: InMemorySpanExporter
) -> None:
    scripted_llm.replies = [CHAIN, "Edges drawn twice."]
    env = {**CANNY_ONLY, "CHORUS_LLM_BASE_URL": scripted_llm.base_url}
    async with running_stack(nats_url, env) as settings:
        await _chat(settings.grpc_addr, (("traceparent", CALLER),))
    trace = _request_spans(spans)
    assert {s.context.trace_id for s in trace} == {int(CALLER.split("-")[1], 16)}
    by_id = {s.context.span_id: s for s in trace}
    for s in trace:  # connected: every parent is in the trace, or is the caller's span
        assert s.parent is not None
        assert s.parent.span_id in by_id or s.parent.span_id == int(CALLER.split("-")[2], 16)
    names = [s.name for s in trace]
    for stage in ("planner", "selector", "executor", "responder"):
        assert f"{stage} handle" in names
    assert names.count("task canny-control") == 2
    assert "llm complete" in names and "llm stream" in names
    for handled in (s for s in trace if s.name.endswith(" handle")):  # each a bus hop
        assert handled.parent is not None
        assert by_id[handled.parent.span_id].name.startswith("publish ")


async def test_a_request_without_trace_context_gets_a_trace_of_its_own(
    nats_url: str, scripted_llm: ScriptedLLM, spans: InMemorySpanExporter
) -> None:
    scripted_llm.replies = [CHAIN, "Edges drawn twice."]
    env = {**CANNY_ONLY, "CHORUS_LLM_BASE_URL": scripted_llm.base_url}
    async with running_stack(nats_url, env) as settings:
        await _chat(settings.grpc_addr, (("traceparent", "00-not-a-trace"),))
    trace = _request_spans(spans)
    roots = [s for s in trace if s.parent is None]
    assert [r.name for r in roots] == ["chorus request"]
    assert {"planner handle", "responder handle"} <= {s.name for s in trace}
