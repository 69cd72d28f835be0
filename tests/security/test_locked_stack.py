"""Every service works under its own narrowed role, as deploy/ runs them: the gateway apart,
the planner without the gateway's permissions, an executor allowed only its lanes. The
server refuses nothing they ask for along the way."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from chorus.v1 import chorus_pb2_grpc
from chorus.v1.chorus_pb2 import (
    ArtifactChunk,
    DownloadArtifactRequest,
    ListModelsRequest,
    WatchChatRequest,
)
from chorus.v1.messages_pb2 import CancelRequest, ChatMessage, ChatRequest, ErrorCode
from PIL import Image

from services.common.roles import planner_role
from tests.integration.stack import CANNY_ONLY, GATEWAY_APART, WITH_GATEWAY_APART, running_stack
from tests.locked_bus import locked_bus
from tests.support import ScriptedLLM, marks_the_square, square_png

SLOW = "a long story"  # the executor's LLM call for this text takes a while: time to cancel


def _reply(messages: list[dict[str, Any]]) -> str:
    if SLOW in json.dumps(messages):
        time.sleep(3)
    return "All done."


async def _until_serving(stub: chorus_pb2_grpc.ChorusStub, task: str) -> None:
    for _ in range(100):
        if (await stub.ListModels(ListModelsRequest(task=task))).workers:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no replica of {task} announced")


async def test_every_service_works_under_its_own_role(
    tmp_path: Path, scripted_llm: ScriptedLLM
) -> None:
    scripted_llm.replies = [_reply]
    env = {
        # Built-ins and the LLM's text tasks: canny for files, summarization to cancel.
        "CHORUS_EXECUTOR_MODELS": CANNY_ONLY["CHORUS_EXECUTOR_MODELS"],
        "CHORUS_EXECUTOR_LOAD": "first-use",
        "CHORUS_LLM_BASE_URL": scripted_llm.base_url,
        "CHORUS_PLANNER": "rules",
        **GATEWAY_APART,
    }
    planner_alone = {"planner": planner_role(hosts_gateway=False)}
    with locked_bus(tmp_path / "jetstream", env, planner_alone) as locked:
        async with (
            running_stack(locked.url, env, WITH_GATEWAY_APART, locked.passwords) as settings,
            grpc.aio.insecure_channel(settings.grpc_addr) as channel,
        ):
            stub = chorus_pb2_grpc.ChorusStub(channel)
            await _until_serving(stub, "canny-control")  # the gateway reads the registry
            await _until_serving(stub, "summarization")

            async def chunks() -> AsyncIterator[ArtifactChunk]:
                yield ArtifactChunk(name="square.png", data=square_png())

            upload = await stub.UploadArtifact(chunks())
            message = ChatMessage(role="user", content="Find the edges in square.png")
            message.artifacts.append(upload)
            response = await stub.Chat(ChatRequest(messages=[message]))
            assert not response.HasField("error"), response.error
            (edges,) = response.artifacts  # read and written by the executor
            download = stub.DownloadArtifact(DownloadArtifactRequest(id=edges.id))
            data = b"".join([chunk.data async for chunk in download])
            assert marks_the_square(Image.open(io.BytesIO(data)))
            replay = stub.WatchChat(WatchChatRequest(request_id=response.request_id))
            watched = [event async for event in replay]
            assert watched[0].HasField("plan_ready") and watched[-1].HasField("done")

            # A cancel reaches the selector's consumer and the running executor.
            call = stub.StreamChat(
                ChatRequest(messages=[ChatMessage(role="user", content=f"Summarize '{SLOW}'")])
            )
            async for event in call:
                if event.WhichOneof("event") == "task_started":
                    await stub.Cancel(CancelRequest(request_id=event.request_id, reason="Stop"))
                last = event
            assert last.done.error.code == ErrorCode.ERROR_CODE_CANCELLED
        assert locked.violations() == []
