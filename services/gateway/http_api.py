"""The gateway's HTTP side on Starlette: the OpenAI-compatible endpoint, file downloads,
cancellation, `/healthz` and the web UI at `/`.

Errors become OpenAI's error shape here, through the table in `errors`, and nowhere else.
A client that disconnects cancels its request (the front door's wait ends, and with it the
request on the bus).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from importlib import resources
from typing import Any

from chorus.v1.messages_pb2 import ChatMessage, ChatRequest, ChatResponse, ErrorCode, ProgressEvent
from google.protobuf.json_format import MessageToDict
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from services.gateway import openai_response as shape
from services.gateway.auth import Gate, HttpGate, owner_var
from services.gateway.config import GatewayConfig
from services.gateway.errors import PipelineFailed, RequestError, status_of
from services.gateway.frontdoor import FrontDoor
from services.gateway.guard import HeadGuard
from services.gateway.openai_request import ChatCompletion, Message, read_body

log = logging.getLogger(__name__)
KEEP_ALIVE_S = 10.0  # an SSE comment when the pipeline is quiet, so no proxy times the stream out
_TOO_LARGE = ErrorCode.ERROR_CODE_PAYLOAD_TOO_LARGE


class HttpApi:
    def __init__(self, front: FrontDoor, config: GatewayConfig) -> None:
        self._front = front
        self._config = config

    def app(self) -> Starlette:
        static = resources.files("services.gateway") / "static"
        routes = [
            Route("/healthz", _healthz),
            Route("/v1/models", _models),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/files/{file_id}/content", self.file),
            Route("/v1/requests/{request_id}/cancel", self.cancel, methods=["POST"]),
            Route("/", _index),
            Mount("/ui", StaticFiles(directory=str(static)), name="ui"),
        ]
        cors = Middleware(
            CORSMiddleware,
            allow_origins=list(self._config.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
        )
        handlers: dict[Any, Any] = {
            RequestError: _refused,
            HTTPException: _http_error,
            ClientDisconnect: _client_left,
            Exception: _crashed,
        }
        # The key is checked after CORS, so a browser's preflight (which carries none) passes.
        gate = Middleware(HttpGate, gate=Gate(self._config.api_keys))
        middleware = [Middleware(HeadGuard), cors, gate]
        return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)

    def _base_url(self, request: Request) -> str:
        return self._config.public_url or str(request.base_url).rstrip("/")

    async def chat(self, request: Request) -> Response:
        call = read_body(await self._json(request))
        self._front.admit(owner_var.get())  # before its inline files are stored
        chat = ChatRequest(messages=[await self._message(m) for m in call.messages])
        events = await self._front.start(
            chat,
            api="openai",
            owner=owner_var.get(),
            traceparent=request.headers.get("traceparent", ""),
        )
        base_url = self._base_url(request)
        if call.stream:
            return StreamingResponse(
                _stream(chat.request_id, events, call, base_url),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        response = await _until_disconnect(request, _done(events))
        cut = shape.AnswerCut(call.stop, call.max_tokens)
        content = cut.feed(response.answer) + cut.flush()
        content = shape.with_files(content, response, base_url)
        body = shape.completion(response, content, cut.finish_reason or "stop", base_url)
        return JSONResponse(body)

    async def _json(self, request: Request) -> object:
        limit = self._config.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise RequestError(
                f"the body is {declared} bytes, over the {limit}-byte limit", _TOO_LARGE
            )
        body = bytearray()
        async for part in request.stream():
            body += part
            if len(body) > limit:
                raise RequestError(f"the body is over the {limit}-byte limit", _TOO_LARGE)
        try:
            return json.loads(body)
        except ValueError as e:
            raise RequestError(f"the body is not JSON: {e}") from e

    async def _message(self, message: Message) -> ChatMessage:
        """A chat message; its inline files are stored and attached as artifacts."""
        out = ChatMessage(role=message.role)
        texts = list(message.texts)
        for file in message.files:
            ref = await self._front.put_artifact(
                file.data, file.name, file.media_type, owner_var.get()
            )
            out.artifacts.append(ref)
            texts.append(ref.name)
        out.content = " ".join(t for t in texts if t)
        return out

    async def file(self, request: Request) -> Response:
        ref, parts = await self._front.artifact(request.path_params["file_id"], owner_var.get())
        # Shown inline (an <img> in a chat); `nosniff` keeps a browser from running it as a page.
        headers = {
            "Content-Disposition": f'inline; filename="{ref.name}"',
            "Content-Length": str(ref.size),  # so a client tells a cut-off download
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox",
            "Cache-Control": "private, max-age=3600",
        }
        # The store hands back only a safe name and a plain `type/subtype` (checked when stored
        # and again when read), so both can go into headers as they are. The parts are sent as
        # the store reads them: the file is never held whole.
        return StreamingResponse(parts, media_type=ref.media_type, headers=headers)

    async def cancel(self, request: Request) -> Response:
        request_id = request.path_params["request_id"]
        await self._front.cancel(
            request_id, api="openai", owner=owner_var.get(), reason="cancelled by the user"
        )
        return JSONResponse({"request_id": request_id, "cancelled": True})


async def _stream(
    request_id: str,
    events: AsyncGenerator[ProgressEvent, None],
    call: ChatCompletion,
    base_url: str,
) -> AsyncIterator[str]:
    """OpenAI's chunks as server-sent events: the workflow as `reasoning_content`, the answer
    as `content`, files last; each workflow chunk also carries the event itself under
    `chorus.event` for clients that draw it (the web UI)."""
    cut = shape.AnswerCut(call.stop, call.max_tokens)
    first = shape.chunk(request_id, {"role": "assistant", "content": ""})
    first["chorus"] = {"request_id": request_id}
    yield _sse(first)
    try:
        async with contextlib.aclosing(_with_keep_alive(events)) as paced:
            async for event in paced:
                if event is None:
                    yield ": keep-alive\n\n"
                elif part := _stream_part(request_id, event, cut):
                    yield _sse(part)
                elif event.HasField("done"):
                    for part in _finish(event.done, cut, base_url, call.include_usage):
                        yield _sse(part)
                    break
    except RequestError as e:  # after the head went out, an error is an event (a timeout)
        status = status_of(e.code)
        yield _sse(shape.error_body(str(e), status.openai_type, status.http))
    yield "data: [DONE]\n\n"


def _stream_part(request_id: str, event: ProgressEvent, cut: shape.AnswerCut) -> dict[str, Any]:
    """The chunk of an answer token or a workflow event; {} for one that sends nothing now."""
    if event.WhichOneof("event") == "answer_token":
        text = cut.feed(event.answer_token)
        return shape.chunk(request_id, {"content": text}) if text else {}
    line = shape.workflow_line(event)
    if not line:
        return {}
    part = shape.chunk(request_id, {"reasoning_content": line})
    part["chorus"] = {"event": _event_json(event)}
    return part


def _finish(
    response: ChatResponse, cut: shape.AnswerCut, base_url: str, include_usage: bool
) -> list[dict[str, Any]]:
    if response.HasField("error"):
        failed = PipelineFailed(response.error)
        status = status_of(failed.code)
        return [shape.error_body(str(failed), status.openai_type, status.http)]
    parts = []
    tail = shape.with_files(cut.flush(), response, base_url)
    if tail:
        parts.append(shape.chunk(response.request_id, {"content": tail}))
    final = shape.chunk(response.request_id, {}, cut.finish_reason or "stop")
    final["chorus"] = shape.extra(response, base_url)
    parts.append(final)
    if include_usage:
        usage = {**shape.chunk(response.request_id, {}), "choices": []}
        usage["usage"] = shape.usage(response, response.answer)
        parts.append(usage)
    return parts


async def _with_keep_alive(
    events: AsyncGenerator[ProgressEvent, None],
) -> AsyncGenerator[ProgressEvent | None, None]:
    """The events, with `None` after each quiet `KEEP_ALIVE_S`; closing this closes `events`."""
    queue: asyncio.Queue[ProgressEvent | BaseException | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            async for event in events:
                await queue.put(event)
        except Exception as e:
            await queue.put(e)
        await queue.put(None)

    task = asyncio.create_task(pump())
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), KEEP_ALIVE_S)
            except TimeoutError:
                yield None
                continue
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await events.aclose()


async def _done(events: AsyncGenerator[ProgressEvent, None]) -> ChatResponse:
    async with contextlib.aclosing(events):
        async for event in events:
            if event.HasField("done"):
                if event.done.HasField("error"):
                    raise PipelineFailed(event.done.error)
                return event.done
    raise RequestError("the event stream ended without a response", ErrorCode.ERROR_CODE_INTERNAL)


async def _until_disconnect(request: Request, work: Any) -> ChatResponse:
    """Runs `work`, cancelling it (and so the request) when the client goes away first."""
    task: asyncio.Task[ChatResponse] = asyncio.ensure_future(work)
    gone = asyncio.create_task(_disconnected(request))
    try:
        await asyncio.wait([task, gone], return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        raise ClientDisconnect()
    return task.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _event_json(event: ProgressEvent) -> dict[str, Any]:
    return MessageToDict(
        event, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _error(
    message: str, code: ErrorCode.ValueType, retry_after_s: int | None = None
) -> JSONResponse:
    status = status_of(code)
    body = shape.error_body(message, status.openai_type, status.http)
    headers = {} if retry_after_s is None else {"Retry-After": str(retry_after_s)}
    return JSONResponse(body, status.http, headers=headers)


async def _refused(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return _error(str(exc), exc.code, exc.retry_after_s)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
    body = shape.error_body(str(exc.detail), kind, exc.status_code)
    return JSONResponse(body, exc.status_code, headers=exc.headers)


async def _client_left(_request: Request, _exc: Exception) -> Response:
    # Nobody reads this; the request was cancelled when the client went away.
    return Response(status_code=400)


async def _crashed(request: Request, exc: Exception) -> Response:
    log.error("the HTTP API failed on %s", request.url.path, exc_info=exc)
    return _error("internal error; see the gateway's log", ErrorCode.ERROR_CODE_INTERNAL)


async def _healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _models(_request: Request) -> Response:
    return JSONResponse(shape.models())


async def _index(_request: Request) -> Response:
    page = resources.files("services.gateway") / "static" / "index.html"
    return Response(
        page.read_bytes(),
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": _PAGE_POLICY},
    )


# The page runs only its own script: no inline script, so injected markup cannot run any.
_PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'"
)
