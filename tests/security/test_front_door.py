"""Attacks on a running front door (real NATS, gRPC and HTTP), each as a client would try it:
no key, another's key, another's request and files, a taken request id, an injected header,
too many requests at once."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import httpx
import nats
import pytest
import pytest_asyncio
from chorus.v1 import chorus_pb2_grpc
from chorus.v1.chorus_pb2 import (
    ArtifactChunk,
    DownloadArtifactRequest,
    ListModelsRequest,
    WatchChatRequest,
)
from chorus.v1.messages_pb2 import ArtifactRef, CancelRequest, ChatMessage, ChatRequest
from nats.js.api import ObjectMeta
from prometheus_client import REGISTRY

from services.cli.client import ChorusClient
from services.cli.cluster import free_port
from services.common import subjects
from services.gateway.keys import add_key
from tests.integration.stack import CANNY_ONLY, running_stack
from tests.support import ScriptedLLM, square_png

pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Door:
    grpc_addr: str
    channel: grpc.aio.Channel
    stub: chorus_pb2_grpc.ChorusStub
    http: httpx.AsyncClient
    tokens: dict[str, str]
    llm: ScriptedLLM

    def as_(self, name: str) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.tokens[name]}"),)

    def http_as(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def door(
    module_nats: str, module_llm: ScriptedLLM, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Door]:
    keys_file = tmp_path_factory.mktemp("keys") / "keys"
    tokens = {name: add_key(keys_file, name) for name in ("alice", "bob", "carol")}
    tokens["eve"] = add_key(keys_file, "eve", expires=datetime.now(UTC) - timedelta(days=1))
    http_addr = f"127.0.0.1:{free_port()}"
    env = {
        **CANNY_ONLY,
        "CHORUS_LLM_BASE_URL": module_llm.base_url,
        "CHORUS_PLANNER": "rules",
        "CHORUS_OPENAI_ADDR": http_addr,
        "CHORUS_API_KEYS": str(keys_file),
        "CHORUS_MAX_REQUESTS_PER_KEY": "1",
        "CHORUS_GRPC_REFLECTION": "0",
    }
    async with (
        running_stack(module_nats, env) as settings,
        grpc.aio.insecure_channel(settings.grpc_addr) as channel,
        httpx.AsyncClient(base_url=f"http://{http_addr}", timeout=30) as http,
    ):
        stub = chorus_pb2_grpc.ChorusStub(channel)
        yield Door(settings.grpc_addr, channel, stub, http, tokens, module_llm)


@pytest.fixture
def reset(door: Door) -> Door:
    door.llm.replies = ["Done."]
    door.llm.token_interval_s = 0.0
    return door


def _refused(api: str, reason: str) -> float:
    return (
        REGISTRY.get_sample_value("chorus_auth_refused_total", {"api": api, "reason": reason}) or 0
    )


async def _upload(door: Door, who: str, media_type: str = "image/png") -> ArtifactRef:
    async def chunks() -> AsyncIterator[ArtifactChunk]:
        yield ArtifactChunk(name="square.png", media_type=media_type, data=square_png())

    ref: ArtifactRef = await door.stub.UploadArtifact(chunks(), metadata=door.as_(who))
    return ref


def _hello(request_id: str = "") -> ChatRequest:
    return ChatRequest(request_id=request_id, messages=[ChatMessage(role="user", content="Hi")])


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        ((), "missing"),
        ((("x-api-key", "TOKEN"),), "wrong_header"),
        ((("authorization", "TOKEN"),), "malformed"),
        ((("authorization", "Bearer chorus_" + "x" * 43),), "unknown"),
    ],
)
async def test_grpc_without_a_valid_key_is_unauthenticated_counted_and_logged_without_it(
    reset: Door,
    caplog: pytest.LogCaptureFixture,
    metadata: tuple[tuple[str, str], ...],
    reason: str,
) -> None:
    token = reset.tokens["alice"]
    metadata = tuple((k, v.replace("TOKEN", token)) for k, v in metadata)
    before = _refused("grpc", reason)
    caplog.set_level(logging.WARNING)
    for call in (
        reset.stub.Chat(_hello(), metadata=metadata),
        reset.stub.ListModels(ListModelsRequest(), metadata=metadata),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert token not in str(refused.value.details())
    assert _refused("grpc", reason) == before + 2
    assert "call refused" in caplog.text and token not in caplog.text


async def test_http_needs_a_key_on_the_api_but_not_for_health(reset: Door) -> None:
    assert (await reset.http.get("/v1/models")).status_code == 401
    wrong = await reset.http.get("/v1/models", headers={"X-Api-Key": reset.tokens["bob"]})
    assert wrong.status_code == 401 and "authorization" in wrong.json()["error"]["message"]
    assert (await reset.http.get("/v1/models", headers=reset.http_as("bob"))).status_code == 200
    assert (await reset.http.get("/healthz")).status_code == 200


async def test_reflection_can_be_turned_off(reset: Door) -> None:
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(reset.channel)
    ask = reflection_pb2.ServerReflectionRequest(list_services="")
    with pytest.raises(grpc.aio.AioRpcError) as off:
        async for _ in stub.ServerReflectionInfo(iter([ask]), metadata=reset.as_("alice")):
            pass
    assert off.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_another_key_cannot_watch_cancel_or_reuse_a_request(reset: Door) -> None:
    response = await reset.stub.Chat(_hello("alice-1"), metadata=reset.as_("alice"))
    assert response.request_id == "alice-1"
    for call in (
        reset.stub.WatchChat(WatchChatRequest(request_id="alice-1"), metadata=reset.as_("bob")),
        reset.stub.Cancel(CancelRequest(request_id="alice-1"), metadata=reset.as_("bob")),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as hidden:
            await _finish(call)
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    for who in ("bob", "alice"):
        with pytest.raises(grpc.aio.AioRpcError) as taken:
            await reset.stub.Chat(_hello("alice-1"), metadata=reset.as_(who))
        assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    taken_http = await reset.http.post("/v1/requests/alice-1/cancel", headers=reset.http_as("bob"))
    assert taken_http.status_code == 404
    watched = [
        e
        async for e in reset.stub.WatchChat(
            WatchChatRequest(request_id="alice-1"), metadata=reset.as_("alice")
        )
    ]
    assert watched[-1].done.answer == response.answer


async def _finish(call: Any) -> None:
    if hasattr(call, "__aiter__"):
        async for _ in call:
            pass
    else:
        await call


async def test_another_key_cannot_download_or_refer_to_a_file(reset: Door) -> None:
    ref = await _upload(reset, "alice")
    assert len(ref.id.split("-")[0]) == 32  # 128 random bits
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        async for _ in reset.stub.DownloadArtifact(
            DownloadArtifactRequest(id=ref.id), metadata=reset.as_("bob")
        ):
            pass
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
    page = await reset.http.get(f"/v1/files/{ref.id}/content", headers=reset.http_as("bob"))
    assert page.status_code == 404
    mine = await reset.http.get(f"/v1/files/{ref.id}/content", headers=reset.http_as("alice"))
    assert mine.status_code == 200 and mine.content == square_png()
    request = _hello()
    request.messages[0].artifacts.append(ArtifactRef(id=ref.id))
    with pytest.raises(grpc.aio.AioRpcError) as refer:
        await reset.stub.Chat(request, metadata=reset.as_("bob"))
    assert refer.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_media_type_with_a_line_break_is_refused_where_it_enters(reset: Door) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await _upload(reset, "alice", "image/png\r\nSet-Cookie: session=stolen")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "media_type" in str(refused.value.details())


async def test_requests_over_the_per_key_limit_get_resource_exhausted_with_a_retry_hint(
    reset: Door,
) -> None:
    reset.llm.replies = ["a slow answer " * 20]
    reset.llm.token_interval_s = 0.05
    slow = asyncio.ensure_future(reset.stub.Chat(_hello(), metadata=reset.as_("carol")))
    try:
        for _ in range(100):  # until the first request is running
            await asyncio.sleep(0.05)
            try:
                await reset.stub.Chat(_hello(), metadata=reset.as_("carol"))
            except grpc.aio.AioRpcError as e:
                busy = e
                break
        assert busy.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert dict(busy.trailing_metadata() or ())["retry-after"] == "5"
        other = await reset.http.get("/v1/models", headers=reset.http_as("alice"))
        assert other.status_code == 200  # another key is not held back
    finally:
        await slow


async def test_a_50_kb_one_word_request_is_answered_and_others_are_served_meanwhile(
    reset: Door,
) -> None:
    word = ChatRequest(messages=[ChatMessage(role="user", content="a" * 50_000 + ".png")])
    long = asyncio.ensure_future(reset.stub.Chat(word, metadata=reset.as_("bob")))
    models = await reset.http.get("/v1/models", headers=reset.http_as("alice"))
    assert models.status_code == 200
    assert (await long).answer == "Done."


async def test_a_stored_media_type_with_a_line_break_never_reaches_a_header(
    reset: Door, module_nats: str
) -> None:
    """Written straight into the bucket (past every upload check), then fetched over HTTP."""
    nc = await nats.connect(module_nats)
    try:
        bucket = await nc.jetstream().object_store(subjects.ARTIFACT_BUCKET)
        headers = {
            "Chorus-Name": "x.png",
            "Chorus-Media-Type": "text/html\r\nSet-Cookie: session=stolen",
            "Chorus-Owner": "alice",
        }
        artifact_id = "0" * 32 + "-x.png"
        await bucket.put(
            artifact_id, b"<b>hi</b>", meta=ObjectMeta(name=artifact_id, headers=headers)
        )
    finally:
        await nc.close()
    page = await reset.http.get(f"/v1/files/{artifact_id}/content", headers=reset.http_as("alice"))
    assert page.status_code == 200
    assert page.headers["content-type"] == "application/octet-stream"
    assert "set-cookie" not in page.headers


async def test_the_id_of_a_request_sent_on_the_bus_cannot_be_claimed_to_read_it(
    reset: Door, module_nats: str
) -> None:
    nc = await nats.connect(module_nats)
    try:
        sent = _hello("integrator-1")
        await nc.jetstream().publish(subjects.REQUEST, sent.SerializeToString())
        events = await nc.jetstream().subscribe(subjects.event("integrator-1"))
        await events.next_msg(timeout=30)  # it has been planned
    finally:
        await nc.close()
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await reset.stub.Chat(_hello("integrator-1"), metadata=reset.as_("bob"))
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await _finish(
            reset.stub.WatchChat(
                WatchChatRequest(request_id="integrator-1"), metadata=reset.as_("bob")
            )
        )
    assert hidden.value.code() == grpc.StatusCode.NOT_FOUND


async def test_the_cli_client_sends_its_key(reset: Door) -> None:
    def ask(api_key: str | None) -> str:
        client = ChorusClient(reset.grpc_addr, api_key)
        try:
            return [e for e in client.stream_chat(_hello())][-1].done.answer
        finally:
            client.close()

    assert await asyncio.to_thread(ask, reset.tokens["alice"]) == "Done."
    with pytest.raises(grpc.RpcError) as refused:
        await asyncio.to_thread(ask, None)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_large_file_downloads_intact_one_stored_part_at_a_time(reset: Door) -> None:
    data = os.urandom(5 * 1024 * 1024 + 7)

    async def chunks() -> AsyncIterator[ArtifactChunk]:
        for offset in range(0, len(data), 1024 * 1024):
            part = ArtifactChunk(data=data[offset : offset + 1024 * 1024])
            if offset == 0:
                part.name, part.media_type = "big.bin", "application/octet-stream"
            yield part

    ref = await reset.stub.UploadArtifact(chunks(), metadata=reset.as_("alice"))
    got = [
        c
        async for c in reset.stub.DownloadArtifact(
            DownloadArtifactRequest(id=ref.id), metadata=reset.as_("alice")
        )
    ]
    assert (got[0].name, got[0].media_type, got[0].data) == ("big.bin", ref.media_type, b"")
    # As the store keeps it (128 KiB parts), never gathered into one message.
    assert len(got) == 1 + 41 and max(len(c.data) for c in got) == 128 * 1024
    assert b"".join(c.data for c in got) == data
    digest, parts = hashlib.sha256(), 0
    url = f"/v1/files/{ref.id}/content"
    async with reset.http.stream("GET", url, headers=reset.http_as("alice")) as page:
        assert page.status_code == 200
        assert page.headers["content-length"] == str(len(data))
        async for part in page.aiter_raw():
            digest.update(part)
            parts += 1
    assert digest.digest() == hashlib.sha256(data).digest() and parts > 1


async def test_an_expired_key_is_refused_saying_so_counted_and_logged_without_it(
    reset: Door, caplog: pytest.LogCaptureFixture
) -> None:
    token = reset.tokens["eve"]
    before = {api: _refused(api, "expired") for api in ("grpc", "openai")}
    caplog.set_level(logging.WARNING)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await reset.stub.ListModels(ListModelsRequest(), metadata=reset.as_("eve"))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "the API key 'eve' expired at" in str(refused.value.details())
    page = await reset.http.get("/v1/models", headers=reset.http_as("eve"))
    assert page.status_code == 401 and "expired" in page.json()["error"]["message"]
    assert token not in str(refused.value.details()) + page.text + caplog.text
    assert "expired" in caplog.text
    assert _refused("grpc", "expired") == before["grpc"] + 1
    assert _refused("openai", "expired") == before["openai"] + 1
