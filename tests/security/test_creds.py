"""`.creds` logins (`CHORUS_NATS_CREDS`) against a real NATS server in operator mode.

The operator, its account and a user per role are made as `nsc` makes them (tests/nats_jwt.py),
each user JWT carrying its role's permissions from services/common/roles.py and named for it;
the services find their inbox prefix from that name. A request runs end to end with every
service logged in by its `.creds` file, and the forged-result attack fails as with passwords.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import nats
import pytest
from chorus.v1 import chorus_pb2_grpc
from chorus.v1.chorus_pb2 import ArtifactChunk
from chorus.v1.messages_pb2 import ChatMessage, ChatRequest, TaskResult

from services.cli.cluster import free_port, nats_server_binary
from services.common import bus, subjects
from services.common.roles import local_roles
from services.common.settings import Settings
from services.executor.config import lanes_from_env
from tests.integration.stack import CANNY_ONLY, running_stack
from tests.nats_jwt import Operator
from tests.support import square_png


@dataclass(frozen=True)
class JwtBus:
    url: str
    creds: dict[str, Path]  # role -> its .creds file
    operator: Operator
    log: Path

    def violations(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if "Violation" in line]


@pytest.fixture
def jwt_nats(tmp_path: Path) -> Iterator[JwtBus]:
    operator = Operator.new()
    port = free_port()
    config = tmp_path / "operator.conf"
    store = tmp_path / "jetstream"
    config.write_text(
        operator.server_config() + f'jetstream {{ store_dir: "{store}" }}\n'
        f'listen: "127.0.0.1:{port}"\n'
    )
    roles = local_roles(lanes_from_env(CANNY_ONLY))
    creds = {name: operator.creds(role, tmp_path / f"{name}.creds") for name, role in roles.items()}
    log = tmp_path / "nats.log"
    with log.open("wb") as stderr:
        proc = subprocess.Popen([nats_server_binary(), "-c", str(config)], stderr=stderr)
    url = f"nats://127.0.0.1:{port}"
    try:
        _wait_for(url)
        yield JwtBus(url, creds, operator, log)
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_for(url: str) -> None:
    host, port = url.removeprefix("nats://").split(":")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, int(port)), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("nats-server in operator mode did not start")


def _settings(jwt: JwtBus, role: str) -> Settings:
    return Settings.from_env(
        {"CHORUS_NATS_URL": jwt.url, "CHORUS_NATS_CREDS": str(jwt.creds[role])}
    )


async def test_a_request_runs_with_every_service_logged_in_by_its_creds(jwt_nats: JwtBus) -> None:
    logins = {name: {"CHORUS_NATS_CREDS": str(path)} for name, path in jwt_nats.creds.items()}
    async with (
        running_stack(jwt_nats.url, CANNY_ONLY, logins=logins) as settings,
        grpc.aio.insecure_channel(settings.grpc_addr) as channel,
    ):
        stub = chorus_pb2_grpc.ChorusStub(channel)

        async def chunks() -> AsyncIterator[ArtifactChunk]:
            yield ArtifactChunk(name="square.png", data=square_png())

        message = ChatMessage(role="user", content="Find the edges in square.png")
        message.artifacts.append(await stub.UploadArtifact(chunks()))
        response = await stub.Chat(ChatRequest(messages=[message]))
    assert not response.HasField("error"), response.error
    assert [r.task for r in response.results] == ["canny-control"]
    assert len(response.artifacts) == 1
    assert jwt_nats.violations() == []  # each service had what it needed in its user JWT


async def test_a_creds_login_takes_its_roles_permissions_and_inboxes(jwt_nats: JwtBus) -> None:
    executor = _settings(jwt_nats, "executor").nats_auth
    assert executor.inbox_prefix == "_INBOX_executor"  # from the name in its user JWT
    connections = {
        role: await bus.connect(jwt_nats.url, f"test-{role}", _settings(jwt_nats, role).nats_auth)
        for role in ("selector", "executor", "integrator")
    }
    try:
        await bus.ensure_streams(connections["selector"].jetstream())
        result = TaskResult(request_id="victim", task_id=0, task="x").SerializeToString()
        # The forged-result attack: refused to the integrator, allowed to an executor.
        with pytest.raises(nats.errors.Error):
            await connections["integrator"].jetstream().publish(subjects.RESULT, result, timeout=1)
        await connections["executor"].jetstream().publish(subjects.RESULT, result, timeout=5)
        with pytest.raises(nats.errors.Error):  # nor may an executor read the work stream
            await connections["executor"].jetstream(timeout=1).get_msg(subjects.WORK_STREAM, 1)
    finally:
        for nc in connections.values():
            await nc.close()


async def test_creds_of_another_operator_are_refused(jwt_nats: JwtBus, tmp_path: Path) -> None:
    stranger = Operator.new().creds(local_roles([])["gateway"], tmp_path / "stranger.creds")
    with pytest.raises(nats.errors.Error):
        await nats.connect(
            jwt_nats.url, user_credentials=str(stranger), allow_reconnect=False, connect_timeout=2
        )
