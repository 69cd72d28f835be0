"""The locked bus on a real NATS server: each role speaks only for itself; the integrator may
send requests and read events, and a forged result, plan or worker entry is refused."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from chorus.v1.messages_pb2 import ChatMessage, ChatRequest, TaskResult
from nats.aio.client import Client as NATS
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from services.cli.cluster import start_nats_server
from services.common import bus, subjects
from services.common.roles import ROLES
from services.common.settings import NatsAuth


@pytest.fixture
def locked_nats(tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    passwords = {role: secrets.token_urlsafe(16) for role in ROLES}
    proc, url = start_nats_server(tmp_path / "jetstream", passwords=passwords)
    yield url, passwords
    proc.terminate()
    proc.wait(10)


@pytest.fixture
async def as_role(locked_nats: tuple[str, dict[str, str]]) -> AsyncIterator[dict[str, NATS]]:
    url, passwords = locked_nats
    connections = {
        role: await bus.connect(url, f"test-{role}", NatsAuth(role, passwords[role]))
        for role in ("planner", "executor", "integrator")
    }
    await bus.ensure_streams(connections["planner"].jetstream())
    yield connections
    for nc in connections.values():
        await nc.close()


async def _refused(nc: NATS, subject: str) -> None:
    with pytest.raises(nats.errors.Error):
        await nc.jetstream().publish(subject, b"forged", timeout=1)


async def test_a_forged_result_plan_or_worker_entry_from_the_integrator_is_refused(
    as_role: dict[str, NATS],
) -> None:
    integrator, planner = as_role["integrator"], as_role["planner"].jetstream()
    result = TaskResult(request_id="victim", task_id=0, task="x").SerializeToString()
    with pytest.raises(nats.errors.Error):
        await integrator.jetstream().publish(subjects.RESULT, result, timeout=1)
    await _refused(integrator, subjects.PLAN)
    await _refused(integrator, subjects.event("victim"))  # a forged `done` event
    await _refused(integrator, f"$KV.{subjects.WORKER_BUCKET}.fake-worker")
    await _refused(as_role["executor"], subjects.PLAN)  # nor does one stage speak for another
    with pytest.raises(NotFoundError):
        await planner.get_last_msg(subjects.WORK_STREAM, subjects.RESULT)
    await as_role["executor"].jetstream().publish(subjects.RESULT, result, timeout=5)
    assert (await planner.get_last_msg(subjects.WORK_STREAM, subjects.RESULT)).data == result


async def test_the_integrator_sends_requests_and_reads_events_but_not_the_work(
    as_role: dict[str, NATS],
) -> None:
    js = as_role["integrator"].jetstream()
    request = ChatRequest(request_id="mine", messages=[ChatMessage(role="user", content="Hi")])
    await js.publish(subjects.REQUEST, request.SerializeToString(), timeout=5)
    await as_role["planner"].jetstream().publish(subjects.event("mine"), b"event", timeout=5)
    events = await js.subscribe(
        subjects.event("mine"), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
    )
    assert (await events.next_msg(timeout=5)).data == b"event"
    with pytest.raises(nats.errors.Error):  # another's task inputs: no consumer on the work
        await js.pull_subscribe(f"{subjects.INVOKE_PREFIX}.>", durable="spy", stream="CHORUS_WORK")


async def test_a_wrong_password_is_refused(locked_nats: tuple[str, dict[str, str]]) -> None:
    url, _ = locked_nats
    with pytest.raises(nats.errors.Error):
        await nats.connect(
            url, user="executor", password="guess", allow_reconnect=False, connect_timeout=2
        )


async def test_every_stream_and_bucket_is_bounded_and_full_work_is_refused_not_dropped(
    nats_url: str,
) -> None:
    from services.common.artifacts import ArtifactStore
    from services.common.workers import open_worker_bucket
    from services.gateway.owners import RequestOwners

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    try:
        await bus.ensure_streams(js, max_bytes=64 * 1024)
        await ArtifactStore.open(js)
        await RequestOwners.open(js)
        await open_worker_bucket(js, 10.0, 1)
        streams = await js.streams_info()
        assert len(streams) == 6
        assert all((s.config.max_bytes or -1) > 0 for s in streams), [
            s.config.name for s in streams if not s.config.max_bytes
        ]
        with pytest.raises(nats.js.errors.APIError):
            for n in range(100):  # 100 KB into a 64 KB work stream
                await js.publish(subjects.PLAN, b"x" * 1000, headers={"Nats-Msg-Id": str(n)})
        first = await js.get_msg(subjects.WORK_STREAM, 1)
        assert first.data == b"x" * 1000  # the oldest work is still there
    finally:
        await nc.close()
