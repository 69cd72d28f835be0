"""The OpenAI-compatible endpoint, driven by the real `openai` client."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import openai
import pytest
from openai import AsyncOpenAI
from PIL import Image
from prometheus_client import REGISTRY

from services.cli.cluster import free_port
from tests.integration.stack import CANNY_ONLY, running_stack
from tests.support import ScriptedLLM, marks_the_square, square_png

ANSWER = "The edges are in canny-control-0.png, drawn white on black."


@dataclass
class Endpoint:
    client: AsyncOpenAI
    llm: ScriptedLLM
    nats_url: str


@pytest.fixture
async def endpoint(nats_url: str, scripted_llm: ScriptedLLM) -> AsyncIterator[Endpoint]:
    scripted_llm.replies = [ANSWER]
    addr = f"127.0.0.1:{free_port()}"
    env = {
        **CANNY_ONLY,
        "CHORUS_LLM_BASE_URL": scripted_llm.base_url,
        "CHORUS_PLANNER": "rules",  # the LLM writes only the answer
        "CHORUS_OPENAI_ADDR": addr,
    }
    async with (
        running_stack(nats_url, env),
        AsyncOpenAI(base_url=f"http://{addr}/v1", api_key="unused", max_retries=0) as client,
    ):
        yield Endpoint(client, scripted_llm, nats_url)


def _png_data_url() -> str:
    return "data:image/png;base64," + base64.b64encode(square_png()).decode()


def _open_waits(api: str) -> float:
    return REGISTRY.get_sample_value("chorus_api_open_waits", {"api": api}) or 0.0


async def test_models_lists_chorus(endpoint: Endpoint) -> None:
    models = await endpoint.client.models.list()
    assert [m.id for m in models.data] == ["chorus"]


async def test_a_completion_runs_the_pipeline_and_its_file_can_be_fetched(
    endpoint: Endpoint,
) -> None:
    completion = await endpoint.client.chat.completions.create(
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
    )
    assert completion.choices[0].message.content == ANSWER
    extra = completion.model_extra or {}
    (artifact,) = extra["chorus"]["artifacts"]
    assert artifact["media_type"] == "image/png"
    content = await endpoint.client.files.content(artifact["id"])
    edges = Image.open(io.BytesIO(content.read())).convert("L")
    assert edges.size == (48, 48) and marks_the_square(edges)
    # The LLM saw the workflow: the uploaded picture went through canny-control.
    assert "canny-control" in endpoint.llm.requests[-1]["messages"][-1]["content"]


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
    # ... while the answer is still being written: the wait did not just run to its end.
    assert responses.pending_msgs == 0
    # The request itself still finishes: its response is published for anyone who listens.
    response = await responses.next_msg(timeout=30)
    assert response.subject.startswith("chorus.response.")
    await nc.close()


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
    negative = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n"
    assert b"Content-Length is negative" in await _raw(endpoint, negative)
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
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )
    reply = await _raw(endpoint, injected)
    assert reply.startswith(b"HTTP/1.1 400") and b"is not a media type" in reply


async def test_bytes_after_the_request_do_not_cancel_it(endpoint: Endpoint) -> None:
    body = json.dumps({"model": "chorus", "messages": [{"role": "user", "content": "Hi"}]})
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: {len(body)}\r\n\r\n{body}\r\n"
    ).encode()  # a stray CRLF after the body, as some clients send
    reply = await _raw(endpoint, request)
    assert reply.startswith(b"HTTP/1.1 200") and ANSWER.encode() in reply
