"""`LocalCluster` with several processes of a service and the gateway apart, on its embedded
NATS with a user per role: what `python -m bench.capacity` runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from chorus.v1 import chorus_pb2_grpc
from chorus.v1.chorus_pb2 import ArtifactChunk
from chorus.v1.messages_pb2 import ChatMessage, ChatRequest, TaskStatus

from services.cli.cluster import LocalCluster, free_port
from tests.support import CANNY_CHAIN_ANSWER, canny_chain_llm, square_png

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    llm = canny_chain_llm()
    cluster = LocalCluster(
        grpc_addr=f"127.0.0.1:{free_port()}",
        executor_models=["canny-control=builtin:canny"],
        env={
            "CHORUS_LLM_BASE_URL": llm.base_url,
            "CHORUS_EXECUTOR_DEFAULTS": "0",
            "CHORUS_LOG_LEVEL": "WARNING",
        },
        replicas={"gateway": 1, "planner": 2, "selector": 2},
    )
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def test_each_replica_is_a_process_of_its_own(cluster: LocalCluster) -> None:
    assert cluster.processes == {
        "planner": "planner",
        "planner-1": "planner",
        "selector": "selector",
        "selector-1": "selector",
        "executor": "executor",
        "responder": "responder",
        "gateway": "gateway",
    }
    assert len(set(cluster.metrics_ports.values())) == 7
    assert cluster.exited() is None


def test_requests_through_the_gateway_apart_are_answered(cluster: LocalCluster) -> None:
    async def ask() -> list[tuple[list[int], str]]:
        async with grpc.aio.insecure_channel(cluster.grpc_addr) as channel:
            stub = chorus_pb2_grpc.ChorusStub(channel)

            async def chunks() -> AsyncIterator[ArtifactChunk]:
                yield ArtifactChunk(name="photo.png", media_type="image/png", data=square_png())

            photo = await stub.UploadArtifact(chunks())

            async def one() -> tuple[list[int], str]:
                message = ChatMessage(role="user", content="Edges of photo.png", artifacts=[photo])
                response = await stub.Chat(ChatRequest(messages=[message]), timeout=120)
                return [r.status for r in response.results], response.answer

            return await asyncio.gather(*(one() for _ in range(4)))

    succeeded = [TaskStatus.TASK_STATUS_SUCCEEDED] * 3
    assert asyncio.run(ask()) == [(succeeded, CANNY_CHAIN_ANSWER)] * 4
