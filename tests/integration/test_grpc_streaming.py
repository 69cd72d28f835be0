"""Streaming over gRPC: watching a request again, clients that leave, files that expired,
an LLM that stops halfway, and a chat whose second turn uses the first turn's file."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import nats
import pytest
from chorus.v1 import chorus_pb2_grpc
from chorus.v1.chorus_pb2 import ArtifactChunk, DownloadArtifactRequest, WatchChatRequest
from chorus.v1.messages_pb2 import (
    CancelRequest,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    ErrorCode,
    ProgressEvent,
    TaskStatus,
)
from prometheus_client import REGISTRY

from services.common import subjects
from tests.integration.stack import CANNY_ONLY, running_stack
from tests.support import ScriptedLLM, square_png


@dataclass
class Api:
    stub: chorus_pb2_grpc.ChorusStub
    llm: ScriptedLLM
    nats_url: str


@pytest.fixture
async def api(nats_url: str, scripted_llm: ScriptedLLM) -> AsyncIterator[Api]:
    scripted_llm.replies = ["All done, see the file."]
    env = {**CANNY_ONLY, "CHORUS_LLM_BASE_URL": scripted_llm.base_url, "CHORUS_PLANNER": "rules"}
    async with (
        running_stack(nats_url, env) as settings,
        grpc.aio.insecure_channel(settings.grpc_addr) as channel,
    ):
        yield Api(chorus_pb2_grpc.ChorusStub(channel), scripted_llm, nats_url)


async def _upload(stub: chorus_pb2_grpc.ChorusStub) -> object:
    async def chunks() -> AsyncIterator[ArtifactChunk]:
        yield ArtifactChunk(name="square.png", data=square_png())

    return await stub.UploadArtifact(chunks())


def _open_waits() -> float:
    return REGISTRY.get_sample_value("chorus_api_open_waits", {"api": "grpc"}) or 0.0


async def test_watching_a_request_replays_its_events_and_an_unknown_one_is_not_found(
    api: Api,
) -> None:
    request = ChatRequest(
        request_id="watch-me", messages=[ChatMessage(role="user", content="Hello there")]
    )
    streamed = [e async for e in api.stub.StreamChat(request)]
    watched = [e async for e in api.stub.WatchChat(WatchChatRequest(request_id="watch-me"))]
    assert [e.WhichOneof("event") for e in watched] == [e.WhichOneof("event") for e in streamed]
    assert watched[-1].done.answer == "All done, see the file."
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _ = [e async for e in api.stub.WatchChat(WatchChatRequest(request_id="never-sent"))]
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no request 'never-sent'" in str(caught.value.details())


async def test_cancel_rpc_ends_the_stream_as_cancelled(api: Api) -> None:
    api.llm.replies = ["word " * 100]
    api.llm.token_interval_s = 0.05  # 5 s of answer
    call = api.stub.StreamChat(
        ChatRequest(messages=[ChatMessage(role="user", content="Hello there")])
    )
    seen = []
    async for event in call:
        seen.append(event)
        if event.WhichOneof("event") == "answer_token":
            await api.stub.Cancel(CancelRequest(request_id=event.request_id, reason="enough"))
    done = seen[-1].done
    assert done.error.code == ErrorCode.ERROR_CODE_CANCELLED and "enough" in done.error.message
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await api.stub.Cancel(CancelRequest(request_id="never-sent"))
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND


async def test_cancelling_a_finished_request_leaves_its_answer(api: Api) -> None:
    api.llm.replies = ["Done already."]
    response = await api.stub.Chat(ChatRequest(messages=[ChatMessage(role="user", content="Hi")]))
    await api.stub.Cancel(CancelRequest(request_id=response.request_id))
    watched = [
        e async for e in api.stub.WatchChat(WatchChatRequest(request_id=response.request_id))
    ]
    assert watched[-1].done.answer == "Done already." and not watched[-1].done.HasField("error")
    nc = await nats.connect(api.nats_url)
    last = await nc.jetstream().get_last_msg(
        subjects.EVENTS_STREAM, subjects.event(response.request_id)
    )
    assert ProgressEvent.FromString(last.data or b"").done.answer == "Done already."
    await nc.close()


async def test_a_client_that_cancels_mid_stream_leaves_nothing_waiting(api: Api) -> None:
    api.llm.replies = ["word " * 100]
    api.llm.token_interval_s = 0.05  # 5 s of answer
    before = _open_waits()
    nc = await nats.connect(api.nats_url)
    responses = await nc.subscribe("chorus.response.>")
    call = api.stub.StreamChat(
        ChatRequest(messages=[ChatMessage(role="user", content="Hello there")])
    )
    async for event in call:
        if event.WhichOneof("event") == "answer_token":
            break
    assert _open_waits() == before + 1
    call.cancel()
    for _ in range(100):
        if _open_waits() == before:
            break
        await asyncio.sleep(0.05)
    assert _open_waits() == before
    # The request was cancelled with its caller: its response, for any other listener, says so.
    msg = await responses.next_msg(timeout=30)
    response = ChatResponse.FromString(msg.data)
    assert response.error.code == ErrorCode.ERROR_CODE_CANCELLED
    assert "client disconnected" in response.error.message
    await nc.close()


async def test_an_expired_artifact_is_not_found_with_a_clear_message(api: Api) -> None:
    ref = await _upload(api.stub)
    nc = await nats.connect(api.nats_url)
    store = await nc.jetstream().object_store(subjects.ARTIFACT_BUCKET)
    await store.delete(ref.id)  # type: ignore[attr-defined]  # what the bucket's TTL does
    await nc.close()
    with pytest.raises(grpc.aio.AioRpcError) as download:
        await api.stub.DownloadArtifact(DownloadArtifactRequest(id=ref.id)).read()  # type: ignore[attr-defined]
    assert download.value.code() == grpc.StatusCode.NOT_FOUND
    assert "does not exist or expired" in str(download.value.details())
    message = ChatMessage(role="user", content="edges of square.png", artifacts=[ref])  # type: ignore[list-item]
    with pytest.raises(grpc.aio.AioRpcError) as chat:
        await api.stub.Chat(ChatRequest(messages=[message]))
    assert chat.value.code() == grpc.StatusCode.NOT_FOUND
    assert "messages[0].artifacts[0].id" in str(chat.value.details())


async def test_an_llm_that_stops_halfway_still_ends_with_done(api: Api) -> None:
    api.llm.replies = ["The picture shows a square and its edges are drawn"]
    api.llm.cut_after = 4
    events = [
        e
        async for e in api.stub.StreamChat(
            ChatRequest(messages=[ChatMessage(role="user", content="Hello there")])
        )
    ]
    done = events[-1].done
    tokens = "".join(e.answer_token for e in events if e.WhichOneof("event") == "answer_token")
    assert tokens == done.answer and done.answer.startswith("The picture shows a ")
    assert any("the answer was cut short" in n for n in done.notes)


async def test_a_second_turn_finds_the_file_the_first_turn_made(api: Api) -> None:
    square = await _upload(api.stub)
    first = ChatMessage(role="user", content="Find the edges in square.png", artifacts=[square])  # type: ignore[list-item]
    turn1 = await api.stub.Chat(ChatRequest(messages=[first]))
    (edges,) = turn1.artifacts
    # The client keeps the conversation: the answer's files ride on the assistant turn.
    history = [first, ChatMessage(role="assistant", content=turn1.answer, artifacts=[edges])]
    again = ChatMessage(role="user", content="Now find the edges of the image from before")
    turn2 = await api.stub.Chat(ChatRequest(messages=[*history, again]))
    (task,) = turn2.plan.tasks
    assert task.args[0].artifact.id == edges.id  # the newest image, not the first upload
    assert turn2.results[0].status == TaskStatus.TASK_STATUS_SUCCEEDED
