"""The OpenAI-compatible endpoint, driven by the real `openai` client."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import nats
import openai
import pytest
import pytest_asyncio
from chorus.v1.messages_pb2 import ChatResponse, ErrorCode
from openai import AsyncOpenAI
from PIL import Image
from prometheus_client import REGISTRY

from services.cli.cluster import free_port
from tests.integration.stack import CANNY_ONLY, GATEWAY_APART, WITH_GATEWAY_APART, running_stack
from tests.support import ScriptedLLM, marks_the_square, square_png

ANSWER = "The edges are in canny-control-0.png, drawn white on black."


# One stack for the module (starting one takes seconds), its gateway running on its own as at
# the edge; each test resets the scripted LLM.
pytestmark = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Endpoint:
    client: AsyncOpenAI
    llm: ScriptedLLM
    nats_url: str


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(module_nats: str, module_llm: ScriptedLLM) -> AsyncIterator[Endpoint]:
    addr = f"127.0.0.1:{free_port()}"
    env = {
        **CANNY_ONLY,
        "CHORUS_LLM_BASE_URL": module_llm.base_url,
        "CHORUS_PLANNER": "rules",  # the LLM writes only the answer
        "CHORUS_OPENAI_ADDR": addr,
        **GATEWAY_APART,
    }
    async with (
        running_stack(module_nats, env, WITH_GATEWAY_APART),
        AsyncOpenAI(base_url=f"http://{addr}/v1", api_key="unused", max_retries=0) as client,
    ):
        yield Endpoint(client, module_llm, module_nats)


@pytest.fixture
def endpoint(running: Endpoint) -> Endpoint:
    running.llm.replies = [ANSWER]
    running.llm.token_interval_s = 0.0
    return running


def _png_data_url() -> str:
    return "data:image/png;base64," + base64.b64encode(square_png()).decode()


def _open_waits(api: str) -> float:
    return REGISTRY.get_sample_value("chorus_api_open_waits", {"api": api}) or 0.0


async def test_models_lists_chorus(endpoint: Endpoint) -> None:
    models = await endpoint.client.models.list()
    assert [m.id for m in models.data] == ["chorus"]


async def test_a_completion_runs_the_pipeline_and_links_its_file(endpoint: Endpoint) -> None:
    """What a user of any OpenAI client sees: the answer, and a link to the edges that works."""
    completion = await endpoint.client.chat.completions.create(
        model="chorus",
        messages=[
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Find the edges in this picture"},
                    {"type": "image_url", "image_url": {"url": _png_data_url()}},
                ],
            },
        ],
    )
    content = completion.choices[0].message.content or ""
    assert content.startswith(ANSWER)
    (url,) = re.findall(r"!\[canny-control-0\.png\]\((\S+)\)", content)
    assert url.startswith(f"{endpoint.client.base_url}".removesuffix("/v1/") + "/v1/files/")
    async with httpx.AsyncClient() as http:
        fetched = await http.get(url)
    assert fetched.headers["content-type"] == "image/png"
    edges = Image.open(io.BytesIO(fetched.content)).convert("L")
    assert edges.size == (48, 48) and marks_the_square(edges)
    # The LLM saw the workflow: the uploaded picture went through canny-control.
    assert "canny-control" in endpoint.llm.requests[-1]["messages"][-1]["content"]


async def test_the_stream_carries_the_workflow_as_reasoning(endpoint: Endpoint) -> None:
    stream = await endpoint.client.chat.completions.create(
        model="chorus",
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Find the edges in this picture"},
                    {"type": "image_url", "image_url": {"url": _png_data_url()}},
                ],
            }
        ],
        stream=True,
    )
    reasoning, content = "", ""
    async for chunk in stream:
        delta = chunk.choices[0].delta if chunk.choices else None
        reasoning += str((delta.model_extra or {}).get("reasoning_content") or "") if delta else ""
        content += (delta.content or "") if delta else ""
    assert reasoning.startswith("Plan: 1 task(s): #0 canny-control.")
    assert "Task #0 canny-control started on builtin:canny" in reasoning
    assert re.search(r"Task #0 canny-control succeeded on builtin:canny in [\d.]+s", reasoning)
    assert content.startswith(ANSWER) and "/v1/files/" in content


async def test_stop_and_max_tokens_are_honoured_n_and_tools_refused(endpoint: Endpoint) -> None:
    ask: list[Any] = [{"role": "user", "content": "Hello"}]
    stopped = await endpoint.client.chat.completions.create(
        model="chorus",
        messages=ask,
        stop=["canny"],
    )
    assert stopped.choices[0].message.content == "The edges are in "
    assert stopped.choices[0].finish_reason == "stop"
    short = await endpoint.client.chat.completions.create(
        model="chorus",
        messages=ask,
        max_tokens=3,
    )
    assert short.choices[0].message.content == "The edges are"
    assert short.choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError, match="n: Chorus gives one answer"):
        await endpoint.client.chat.completions.create(model="chorus", messages=ask, n=2)
    tool_turn: Any = {"role": "tool", "content": "42", "tool_call_id": "x"}
    with pytest.raises(openai.BadRequestError, match="calls no client tools"):
        await endpoint.client.chat.completions.create(model="chorus", messages=[*ask, tool_turn])


async def test_the_answer_streams_as_server_sent_events(endpoint: Endpoint) -> None:
    stream = await endpoint.client.chat.completions.create(
        model="chorus",
        messages=[{"role": "user", "content": "Hello, what can you do?"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, finish, usage = [], None, None
    async for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert "".join(pieces) == ANSWER and len([p for p in pieces if p]) > 1
    assert finish == "stop" and usage is not None and usage.completion_tokens > 0


async def test_bad_input_and_missing_files_get_openai_errors(endpoint: Endpoint) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        await endpoint.client.chat.completions.create(model="chorus", messages=[])
    assert "messages" in str(bad.value)
    with pytest.raises(openai.BadRequestError) as empty:
        await endpoint.client.chat.completions.create(
            model="chorus", messages=[{"role": "user", "content": "  "}]
        )
    assert "messages[0].content" in str(empty.value)
    with pytest.raises(openai.NotFoundError) as missing:
        await endpoint.client.files.content("no-such-file.png")
    assert "does not exist or expired" in str(missing.value)


async def test_a_client_that_disconnects_mid_stream_leaves_nothing_waiting(
    endpoint: Endpoint,
) -> None:
    endpoint.llm.replies = ["word " * 100]  # 5 s of streaming
    endpoint.llm.token_interval_s = 0.05
    before = _open_waits("openai")
    cancelled_before = _cancelled("openai", "disconnect")
    nc = await nats.connect(endpoint.nats_url)
    responses = await nc.subscribe("chorus.response.>")
    stream = await endpoint.client.chat.completions.create(
        model="chorus", messages=[{"role": "user", "content": "Hello"}], stream=True
    )
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    assert _open_waits("openai") == before + 1
    await stream.close()
    for _ in range(100):  # the server notices the closed connection and cancels the wait
        if _open_waits("openai") == before:
            break
        await asyncio.sleep(0.05)
    assert _open_waits("openai") == before
    # ... while the answer was still being written, and the request was cancelled with it.
    response = ChatResponse.FromString((await responses.next_msg(timeout=30)).data)
    assert response.error.code == ErrorCode.ERROR_CODE_CANCELLED
    assert _cancelled("openai", "disconnect") == cancelled_before + 1
    await nc.close()


def _cancelled(api: str, how: str) -> float:
    labels = {"api": api, "how": how}
    return REGISTRY.get_sample_value("chorus_requests_cancelled_total", labels) or 0.0


async def test_the_cancel_route_stops_a_streaming_request(endpoint: Endpoint) -> None:
    endpoint.llm.replies = ["word " * 100]  # 5 s of streaming
    endpoint.llm.token_interval_s = 0.05
    before = _cancelled("openai", "request")
    stream = await endpoint.client.chat.completions.create(
        model="chorus", messages=[{"role": "user", "content": "Hello"}], stream=True
    )
    base = str(endpoint.client.base_url).removesuffix("/")
    with pytest.raises(openai.APIError, match="cancelled by the user"):
        async for chunk in stream:
            request_id = (chunk.model_extra or {}).get("chorus", {}).get("request_id")
            if request_id:
                async with httpx.AsyncClient() as http:
                    reply = await http.post(f"{base}/requests/{request_id}/cancel")
                assert reply.json() == {"request_id": request_id, "cancelled": True}
    assert _cancelled("openai", "request") == before + 1


async def _raw(endpoint: Endpoint, request: bytes) -> bytes:
    """One HTTP exchange over a plain socket, for what the `openai` client never sends."""
    url = endpoint.client.base_url
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(request)
    await writer.drain()
    reply = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    return reply


async def test_malformed_http_gets_a_clear_status(endpoint: Endpoint) -> None:
    for head in [
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Content-Length: 3\r\n\r\n{}",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"GET /v1/models HTTP/7.0\r\nHost: x\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    ]:
        reply = await _raw(endpoint, head)
        assert reply.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431", b"HTTP/1.1 505")), head[:60]
    body = json.dumps(
        {
            "model": "chorus",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": "data:x\r\nEvil: 1;base64,AA=="}
                    ],
                }
            ],
        }
    ).encode()
    injected = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        + b"Content-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    reply = await _raw(endpoint, injected)
    assert reply.startswith(b"HTTP/1.1 400") and b"is not a media type" in reply
    assert (await endpoint.client.models.list()).data  # still up


async def test_bad_bodies_get_a_4xx_naming_the_field(endpoint: Endpoint) -> None:
    base = str(endpoint.client.base_url).removesuffix("/")
    ask = [{"role": "user", "content": "Hi"}]
    async with httpx.AsyncClient(base_url=base) as http:
        for body, status, says in [
            ({"messages": ask, "temperatur": 1}, 400, "temperatur: not a chat-completions"),
            ({"messages": ask, "stream": "yes"}, 400, "stream: must be bool"),
            ({"messages": ask, "max_tokens": True}, 400, "max_tokens: must be an integer"),
            ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
            ([1, 2], 400, "a JSON object"),
        ]:
            reply = await http.post("/chat/completions", json=body)
            assert reply.status_code == status and says in reply.json()["error"]["message"]
        huge = await http.post("/chat/completions", content=b"x" * (17 * 1024 * 1024))
        assert huge.status_code == 413 and huge.json()["error"]["type"] == "invalid_request_error"
        assert (await http.post("/chat/completions", content=b"{nope")).status_code == 400
        assert (await http.get("/chat/completions")).status_code == 405
        assert (await http.get("/nowhere")).status_code == 404
        health = await http.get(base.removesuffix("/v1") + "/healthz")
        assert health.json() == {"status": "ok"}


async def test_a_disconnect_mid_upload_leaves_the_gateway_up(endpoint: Endpoint) -> None:
    url = endpoint.client.base_url
    for _ in range(3):
        _, writer = await asyncio.open_connection(url.host, url.port)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
            b"\r\n" + b'{"messages": [' + b" " * 1000
        )
        await writer.drain()
        writer.close()
    assert (await endpoint.client.models.list()).data


async def test_cors_lets_a_page_on_another_origin_call(endpoint: Endpoint) -> None:
    base = str(endpoint.client.base_url).removesuffix("/")
    async with httpx.AsyncClient() as http:
        preflight = await http.options(
            f"{base}/chat/completions",
            headers={
                "Origin": "https://chat.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] in ("*", "https://chat.example")


async def test_one_connection_serves_many_requests(endpoint: Endpoint) -> None:
    base = str(endpoint.client.base_url).removesuffix("/")
    async with httpx.AsyncClient() as http:
        for _ in range(3):
            assert (await http.get(f"{base}/models")).status_code == 200
        # httpx kept one connection alive for all three.
        assert len(http._transport._pool.connections) == 1  # type: ignore[attr-defined]


async def test_bytes_after_the_request_do_not_cancel_it(endpoint: Endpoint) -> None:
    body = json.dumps({"model": "chorus", "messages": [{"role": "user", "content": "Hi"}]})
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()
    reply = await _raw(endpoint, request)
    assert reply.startswith(b"HTTP/1.1 200") and ANSWER.encode() in reply
