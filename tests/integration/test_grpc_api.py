"""The gRPC API against a real NATS: validation, artifacts, health, reflection, models."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from chorus.v1 import chorus_pb2_grpc
from chorus.v1.chorus_pb2 import ArtifactChunk, DownloadArtifactRequest, ListModelsRequest
from chorus.v1.messages_pb2 import ArtifactRef, ChatMessage, ChatRequest, StopAfter
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.integration.stack import CANNY_ONLY, running_stack


@pytest.fixture
async def channel(nats_url: str) -> AsyncIterator[grpc.aio.Channel]:
    async with (
        running_stack(nats_url, CANNY_ONLY) as settings,
        grpc.aio.insecure_channel(settings.grpc_addr) as ch,
    ):
        yield ch


async def _expect(call: object, code: grpc.StatusCode, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    assert caught.value.code() == code
    assert field in str(caught.value.details())


async def test_bad_requests_name_the_field(channel: grpc.aio.Channel) -> None:
    stub = chorus_pb2_grpc.ChorusStub(channel)
    await _expect(stub.Chat(ChatRequest()), grpc.StatusCode.INVALID_ARGUMENT, "messages")
    hello = [ChatMessage(role="user", content="hi")]
    # A request id becomes a subject token: ">" would subscribe to every request's events.
    wildcard = ChatRequest(request_id=">", messages=hello)
    await _expect(stub.Chat(wildcard), grpc.StatusCode.INVALID_ARGUMENT, "request_id")
    huge = ChatRequest(messages=[ChatMessage(role="user", content="x" * 300_000)])
    await _expect(stub.Chat(huge), grpc.StatusCode.INVALID_ARGUMENT, "messages: the request is")
    missing = ChatRequest(
        messages=[ChatMessage(role="user", content="hi", artifacts=[ArtifactRef(id="nope")])]
    )
    await _expect(stub.Chat(missing), grpc.StatusCode.NOT_FOUND, "messages[0].artifacts[0].id")
    await _expect(
        stub.DownloadArtifact(DownloadArtifactRequest(id="nope")).read(),
        grpc.StatusCode.NOT_FOUND,
        "id",
    )


async def test_upload_then_download_round_trips(channel: grpc.aio.Channel) -> None:
    stub = chorus_pb2_grpc.ChorusStub(channel)
    payload = bytes(range(256)) * 5000  # > one chunk

    async def chunks() -> AsyncIterator[ArtifactChunk]:
        yield ArtifactChunk(name="../../etc/blob.bin", data=payload[:700_000])
        yield ArtifactChunk(data=payload[700_000:])

    ref = await stub.UploadArtifact(chunks())
    assert ref.name == "blob.bin" and ref.size == len(payload)  # no path escapes its root
    received = b"".join(
        [c.data async for c in stub.DownloadArtifact(DownloadArtifactRequest(id=ref.id))]
    )
    assert received == payload


async def test_chat_stop_after_plan_and_streamed_events(channel: grpc.aio.Channel) -> None:
    stub = chorus_pb2_grpc.ChorusStub(channel)
    request = ChatRequest(
        messages=[ChatMessage(role="user", content="Summarize 'some text'")],
        stop_after=StopAfter.STOP_AFTER_PLAN,
    )
    response = await stub.Chat(request)
    assert [t.task for t in response.plan.tasks] == ["summarization"] and not response.results
    events = [e async for e in stub.StreamChat(request)]
    assert events[0].WhichOneof("event") == "plan_ready" and events[-1].HasField("done")


async def test_health_reflection_and_models(channel: grpc.aio.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    status = await health.Check(health_pb2.HealthCheckRequest(service="chorus.v1.Chorus"))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = [s.name async for r in replies for s in r.list_services_response.service]
    assert "chorus.v1.Chorus" in names
    models = await chorus_pb2_grpc.ChorusStub(channel).ListModels(
        ListModelsRequest(task="canny-control")
    )
    assert [m.model for w in models.workers for m in w.models] == ["builtin:canny"]
