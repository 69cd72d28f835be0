"""Small task outputs travel inline between the stages, large ones through the object store
only; either way every file an answer names is in the store for its owner, and no one else
(real NATS, gRPC and a real executor running a 3-task canny chain)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import nats
import pytest
from chorus.v1 import chorus_pb2_grpc
from chorus.v1.chorus_pb2 import ArtifactChunk, DownloadArtifactRequest
from chorus.v1.messages_pb2 import (
    ArtifactRef,
    ChatMessage,
    ChatRequest,
    ChatResponse,
    TaskInvocation,
    TaskResult,
    TaskStatus,
)
from nats.aio.msg import Msg

from services.common import subjects
from services.common.artifacts import ArtifactStore
from services.gateway.keys import add_key
from tests.integration.stack import CANNY_ONLY, running_stack
from tests.support import canny_chain_llm, square_png

# Between the edge maps of a 48-px square (about 110 bytes) and of a 512-px one (about 850).
INLINE_MAX = 500


async def test_small_outputs_travel_inline_large_ones_by_reference_and_only_the_owner_downloads(
    nats_url: str, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    tokens = {name: add_key(keys, name) for name in ("alice", "bob")}
    llm = canny_chain_llm()
    env = {
        **CANNY_ONLY,
        "CHORUS_LLM_BASE_URL": llm.base_url,
        "CHORUS_API_KEYS": str(keys),
        "CHORUS_INLINE_MAX_BYTES": str(INLINE_MAX),
    }
    nc = await nats.connect(nats_url)
    seen: list[TaskResult | TaskInvocation] = []

    async def watch(msg: Msg) -> None:
        kind = TaskResult if msg.subject == subjects.RESULT else TaskInvocation
        seen.append(kind.FromString(msg.data))

    # Plain subscribers see the messages the stages send each other, as the streams take them.
    await nc.subscribe(subjects.RESULT, cb=watch)
    await nc.subscribe(subjects.invoke("canny-control", "builtin:canny"), cb=watch)
    store = await ArtifactStore.open(nc.jetstream())

    def as_(name: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {tokens[name]}"),)

    try:
        async with (
            running_stack(nats_url, env) as settings,
            grpc.aio.insecure_channel(settings.grpc_addr) as channel,
        ):
            stub = chorus_pb2_grpc.ChorusStub(channel)

            async def ask(request_id: str, side: int) -> ChatResponse:
                async def chunks() -> AsyncIterator[ArtifactChunk]:
                    yield ArtifactChunk(
                        name="photo.png", media_type="image/png", data=square_png(side)
                    )

                photo: ArtifactRef = await stub.UploadArtifact(chunks(), metadata=as_("alice"))
                message = ChatMessage(role="user", content="Edges of photo.png", artifacts=[photo])
                request = ChatRequest(request_id=request_id, messages=[message])
                response: ChatResponse = await stub.Chat(request, metadata=as_("alice"))
                assert [r.status for r in response.results] == [
                    TaskStatus.TASK_STATUS_SUCCEEDED
                ] * 3, [r.error for r in response.results]
                return response

            async def download(artifact_id: str, who: str) -> bytes:
                chunks = stub.DownloadArtifact(
                    DownloadArtifactRequest(id=artifact_id), metadata=as_(who)
                )
                return b"".join([chunk.data async for chunk in chunks])

            answers = {
                "small": await ask("inline-small", 48),
                "large": await ask("inline-large", 512),
            }
            downloads: dict[str, bytes] = {}
            for response in answers.values():
                assert len(response.artifacts) == 3
                for artifact in response.artifacts:
                    assert not artifact.inline  # what a client gets names files, never carries them
                    downloads[artifact.id] = await download(artifact.id, "alice")
                    assert downloads[artifact.id] == (await store.get(artifact.id))[1]
                    with pytest.raises(grpc.aio.AioRpcError) as hidden:
                        await download(artifact.id, "bob")
                    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        llm.stop()
        await nc.close()

    def files(request_id: str) -> tuple[list[ArtifactRef], list[ArtifactRef]]:
        made = [
            o.artifact
            for m in seen
            if isinstance(m, TaskResult) and m.request_id == request_id
            for o in m.outputs
        ]
        taken = [
            a.artifact
            for m in seen
            if isinstance(m, TaskInvocation) and m.request_id == request_id and m.task_id > 0
            for a in m.args
        ]
        return made, taken

    made, taken = files("inline-small")
    assert len(made) == 3 and len(taken) == 2
    # Each edge map went out inline with its result and in to the next task, as stored.
    assert all(0 < ref.size <= INLINE_MAX and ref.inline == downloads[ref.id] for ref in made)
    assert [ref.inline for ref in taken] == [ref.inline for ref in made[:2]]
    made, taken = files("inline-large")
    assert len(made) == 3 and len(taken) == 2
    assert all(ref.size > INLINE_MAX and not ref.inline for ref in made + taken)
