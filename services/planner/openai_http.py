"""An OpenAI-compatible HTTP endpoint in front of the pipeline, so chat front ends can use Chorus
as if it were a model: `POST /v1/chat/completions` (streamed as server-sent events or not),
`GET /v1/models`, and `GET /v1/files/<artifact id>/content` for the files an answer made.

HTTP/1.1 on asyncio streams, one request per connection (`Connection: close`): enough for the
`openai` client and chat UIs, with no web framework to carry. A client that disconnects
cancels its request's wait at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from chorus.v1.messages_pb2 import ChatMessage, ChatRequest, ChatResponse, ProgressEvent

from services.common.artifact_refs import ArtifactNotFound
from services.common.artifacts import ArtifactStore
from services.common.tokens import count_tokens
from services.planner.frontdoor import FrontDoor, RequestError

log = logging.getLogger(__name__)
MODEL_ID = "chorus"
MAX_BODY_BYTES = 8 * 1024 * 1024  # images may ride inline as data URLs
MAX_HEAD_BYTES = 64 * 1024
READ_TIMEOUT_S = 30.0  # to send the request head and body
_MEDIA_TYPE = re.compile(r"[\w.+-]+/[\w.+-]+")
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
            504: "Gateway Timeout"}  # fmt: skip
_STATUS_BY_REFUSAL = {"invalid_argument": 400, "not_found": 404, "deadline": 504}
_STATUS_BY_PIPELINE_ERROR = {"invalid_request": 400, "payload_too_large": 400,
                             "llm_unavailable": 503}  # fmt: skip


class HttpError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.param = param


@dataclass
class _Request:
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class OpenAIEndpoint:
    def __init__(self, front: FrontDoor) -> None:
        self._front = front
        self._store: ArtifactStore = front.store
        self._connections: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def start(self, addr: str) -> None:
        host, port = split_addr(addr)
        self._server = await asyncio.start_server(self.handle, host, port, limit=MAX_HEAD_BYTES)
        log.info("OpenAI-compatible endpoint on http://%s/v1", addr)

    async def stop(self) -> None:
        """Stops listening and cancels the calls still open (their waits unsubscribe)."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: one request, answered; a client that leaves cancels the work."""
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)
        try:
            try:
                request = await asyncio.wait_for(_read_request(reader), READ_TIMEOUT_S)
            except TimeoutError:
                return  # a client that sends no whole request in time holds no connection
            work = asyncio.create_task(self._route(request, writer))
            gone = asyncio.create_task(_closed(reader))
            await asyncio.wait([work, gone], return_when=asyncio.FIRST_COMPLETED)
            if not work.done():
                log.info("client disconnected from %s; cancelling its wait", request.path)
                work.cancel()
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await work
        except HttpError as e:
            with contextlib.suppress(ConnectionError):
                await _send_error(writer, e)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _route(self, request: _Request, writer: asyncio.StreamWriter) -> None:
        try:
            if request.path == "/v1/models":
                _only(request, "GET")
                await _send_json(writer, 200, _models())
            elif request.path == "/v1/chat/completions":
                _only(request, "POST")
                await self._chat(request, writer)
            elif request.path.startswith("/v1/files/") and request.path.endswith("/content"):
                _only(request, "GET")
                await self._file(
                    request.path.removeprefix("/v1/files/")[: -len("/content")], writer
                )
            else:
                raise HttpError(404, f"no route {request.path}")
        except HttpError as e:
            await _send_error(writer, e)
        except Exception:  # a bug of ours: the client still gets an answer, the log the trace
            log.exception("the OpenAI-compatible endpoint failed on %s", request.path)
            with contextlib.suppress(Exception):
                await _send_error(writer, HttpError(500, "internal error; see the planner's log"))

    async def _chat(self, http: _Request, writer: asyncio.StreamWriter) -> None:
        body = _json_body(http.body)
        request = await self._chat_request(body)
        traceparent = http.headers.get("traceparent", "")
        events = _refused(self._front.run(request, api="openai", traceparent=traceparent))
        async with contextlib.aclosing(events):
            if body.get("stream"):
                await _stream(events, writer, include_usage=_include_usage(body))
            else:
                await _send_json(writer, 200, await _complete(events))

    async def _chat_request(self, body: dict[str, Any]) -> ChatRequest:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise HttpError(400, "messages: must be a non-empty list", "messages")
        request = ChatRequest()
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                raise HttpError(400, f"messages[{i}].role: system, user or assistant", "messages")
            request.messages.append(await self._message(i, m))
        return request

    async def _message(self, i: int, m: dict[str, Any]) -> ChatMessage:
        """A message; its images sent as `data:` URLs are stored and attached as artifacts."""
        message = ChatMessage(role=m["role"])
        content = m.get("content") or ""
        if isinstance(content, str):
            message.content = content
            return message
        if not isinstance(content, list):
            raise HttpError(400, f"messages[{i}].content: a string or a list of parts", "messages")
        texts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                texts.append(str(part.get("text", "")))
            elif kind == "image_url":
                image = part.get("image_url")
                # OpenAI's shape is {"url": ...}; some clients send the URL as a bare string.
                url = str(image.get("url", "") if isinstance(image, dict) else image or "")
                if url.startswith("data:"):
                    ref = await self._store.put(*_data_url(url, f"image-{i}-{j}"))
                    message.artifacts.append(ref)
                    texts.append(ref.name)
                else:
                    texts.append(url)  # a URL the planner passes on as written
            else:
                raise HttpError(400, f"messages[{i}].content[{j}].type: text or image_url")
        message.content = " ".join(t for t in texts if t)
        return message

    async def _file(self, artifact_id: str, writer: asyncio.StreamWriter) -> None:
        try:
            ref, data = await self._store.get(artifact_id)
        except ArtifactNotFound as e:
            raise HttpError(404, str(e), "file_id") from e
        head = {
            "Content-Type": ref.media_type,
            "Content-Length": str(len(data)),
            "Content-Disposition": f'attachment; filename="{ref.name}"',
        }
        await _send_head(writer, 200, head)
        writer.write(data)
        await writer.drain()


def _only(request: _Request, method: str) -> None:
    if request.method != method:
        raise HttpError(405, f"{request.path} takes {method}, not {request.method}")


def _models() -> dict[str, Any]:
    model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "chorus"}
    return {"object": "list", "data": [model]}


def _json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise HttpError(400, f"the body is not JSON: {e}") from e
    if not isinstance(body, dict):
        raise HttpError(400, "the body must be a JSON object")
    return body


def _include_usage(body: dict[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


def _data_url(url: str, stem: str) -> tuple[bytes, str, str]:
    """`data:image/png;base64,...` as (bytes, a file name, the media type)."""
    head, _, payload = url.partition(",")
    media_type = head.removeprefix("data:").split(";")[0] or "application/octet-stream"
    if not _MEDIA_TYPE.fullmatch(media_type):  # it is echoed in a header when fetched
        raise HttpError(400, f"image_url: {media_type[:40]!r} is not a media type")
    if ";base64" not in head:
        raise HttpError(400, "image_url: only base64 data URLs can be uploaded inline")
    try:
        data = base64.b64decode(payload, validate=True)
    except binascii.Error as e:
        raise HttpError(400, f"image_url: bad base64: {e}") from e
    extension = media_type.split("/")[-1].split("+")[0]
    return data, f"{stem}.{extension}", media_type


async def _complete(events: AsyncGenerator[ProgressEvent, None]) -> dict[str, Any]:
    response = await _done(events)
    return {
        "id": f"chatcmpl-{response.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": MODEL_ID,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": response.answer},
                "finish_reason": "stop",
            }
        ],
        "usage": _usage(response),
        "chorus": _extra(response),
    }


async def _done(events: AsyncGenerator[ProgressEvent, None]) -> ChatResponse:
    async for event in events:
        if event.HasField("done"):
            _raise_pipeline_error(event.done)
            return event.done
    raise HttpError(500, "the event stream ended without a response")


async def _stream(
    events: AsyncGenerator[ProgressEvent, None], writer: asyncio.StreamWriter, include_usage: bool
) -> None:
    """Server-sent events in OpenAI's chunk format; errors after the head become an error event."""
    first = await anext(events)  # refusals (bad input) still get a plain HTTP status
    await _send_head(
        writer, 200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    chunk_id = f"chatcmpl-{first.request_id}"
    await _sse(writer, _chunk(chunk_id, {"role": "assistant", "content": ""}, None))
    try:
        event = first
        while True:
            if event.WhichOneof("event") == "answer_token":
                await _sse(writer, _chunk(chunk_id, {"content": event.answer_token}, None))
            elif event.HasField("done"):
                _raise_pipeline_error(event.done)
                final = _chunk(chunk_id, {}, "stop")
                final["chorus"] = _extra(event.done)
                await _sse(writer, final)
                if include_usage:
                    usage = {
                        **_chunk(chunk_id, {}, None),
                        "choices": [],
                        "usage": _usage(event.done),
                    }
                    await _sse(writer, usage)
                break
            event = await anext(events)
    except HttpError as e:
        await _sse(writer, _error_body(e))
    writer.write(b"data: [DONE]\n\n")
    await writer.drain()


async def _refused(
    events: AsyncGenerator[ProgressEvent, None],
) -> AsyncGenerator[ProgressEvent, None]:
    """The front door's refusals as HTTP errors, converted here and nowhere else."""
    try:
        async with contextlib.aclosing(events):
            async for event in events:
                yield event
    except RequestError as e:
        raise HttpError(_STATUS_BY_REFUSAL.get(e.code, 400), str(e)) from e


def _chunk(chunk_id: str, delta: dict[str, str], finish: str | None) -> dict[str, Any]:
    return {
        "id": chunk_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": MODEL_ID,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _extra(response: ChatResponse) -> dict[str, Any]:
    """What Chorus adds to OpenAI's shape: the request id, notes, and the files made."""
    return {
        "request_id": response.request_id,
        "notes": list(response.notes),
        "artifacts": [
            {
                "id": a.id,
                "name": a.name,
                "media_type": a.media_type,
                "size": a.size,
                "url": f"/v1/files/{a.id}/content",
            }
            for a in response.artifacts
        ],
    }


def _usage(response: ChatResponse) -> dict[str, int]:
    """Estimated (services.common.tokens): the request in, the answer out."""
    prompt = sum(count_tokens(m.content) for m in response.plan.request.messages)
    completion = count_tokens(response.answer)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _raise_pipeline_error(response: ChatResponse) -> None:
    if response.HasField("error"):
        err = response.error
        status = _STATUS_BY_PIPELINE_ERROR.get(err.code, 500)
        raise HttpError(status, f"{err.stage}: {err.code}: {err.message}")


def _error_body(e: HttpError) -> dict[str, Any]:
    kind = "invalid_request_error" if 400 <= e.status < 500 else "server_error"
    return {"error": {"message": str(e), "type": kind, "param": e.param, "code": e.status}}


async def _sse(writer: asyncio.StreamWriter, data: dict[str, Any]) -> None:
    writer.write(f"data: {json.dumps(data, ensure_ascii=False)}\n\n".encode())
    await writer.drain()


async def _send_head(writer: asyncio.StreamWriter, status: int, headers: dict[str, str]) -> None:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()


async def _send_json(writer: asyncio.StreamWriter, status: int, data: dict[str, Any]) -> None:
    raw = json.dumps(data, ensure_ascii=False).encode()
    head = {"Content-Type": "application/json", "Content-Length": str(len(raw))}
    await _send_head(writer, status, head)
    writer.write(raw)
    await writer.drain()


async def _send_error(writer: asyncio.StreamWriter, e: HttpError) -> None:
    await _send_json(writer, e.status, _error_body(e))


async def _read_request(reader: asyncio.StreamReader) -> _Request:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as e:
        raise HttpError(413, "the request head is too large") from e
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3:
        raise HttpError(400, f"bad request line {request_line[:80]!r}")
    request = _Request(method=parts[0], path=parts[1].split("?", 1)[0])
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            request.headers[name.strip().lower()] = value.strip()
    if request.headers.get("transfer-encoding", "").lower() == "chunked":
        raise HttpError(400, "chunked request bodies are not supported; send Content-Length")
    try:
        length = int(request.headers.get("content-length", "0"))
    except ValueError as e:
        raise HttpError(400, "Content-Length is not a number") from e
    if length < 0:
        raise HttpError(400, "Content-Length is negative")
    if length > MAX_BODY_BYTES:
        raise HttpError(413, f"the body is {length} bytes, over the {MAX_BODY_BYTES}-byte limit")
    request.body = await reader.readexactly(length)
    return request


async def _closed(reader: asyncio.StreamReader) -> None:
    """Returns when the client closes the connection; bytes it sends meanwhile are ignored
    (one request per connection)."""
    while await reader.read(4096):
        pass


def split_addr(addr: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:8000`)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not host:port: {addr!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


async def start_openai_http(front: FrontDoor, addr: str) -> OpenAIEndpoint:
    endpoint = OpenAIEndpoint(front)
    await endpoint.start(addr)
    return endpoint
