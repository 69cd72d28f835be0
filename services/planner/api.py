"""The gRPC API `chorus.v1.Chorus`: each call becomes a `ChatRequest` on the bus.

Replies are found by request id on `chorus.event.<id>`, so any planner replica can serve any
call. Exceptions become gRPC status codes here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncGenerator, AsyncIterator

import grpc
from chorus.v1 import chorus_pb2, chorus_pb2_grpc
from chorus.v1.chorus_pb2 import (
    ArtifactChunk,
    DownloadArtifactRequest,
    ListModelsRequest,
    ListModelsResponse,
)
from chorus.v1.messages_pb2 import ArtifactRef, ChatRequest, ChatResponse, ProgressEvent
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import DeliverPolicy

from services.common import bus, subjects
from services.common.artifacts import ArtifactNotFound, ArtifactStore
from services.common.runtime import Runtime
from services.common.telemetry import ERRORS, continue_trace, request_id_var
from services.common.workers import WorkerRegistry

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 256 * 1024  # larger inputs travel as artifacts
CHUNK_BYTES = 1024 * 1024
REQUEST_TIMEOUT_S = 900.0
_STATUS_BY_ERROR = {
    "invalid_request": grpc.StatusCode.INVALID_ARGUMENT,
    "llm_unavailable": grpc.StatusCode.UNAVAILABLE,
    "payload_too_large": grpc.StatusCode.INVALID_ARGUMENT,
}


class ChorusApi(chorus_pb2_grpc.ChorusServicer):
    def __init__(self, rt: Runtime, store: ArtifactStore, registry: WorkerRegistry) -> None:
        self._js = rt.js
        self._store = store
        self._registry = registry
        self._max_upload = rt.settings.max_upload_bytes

    async def Chat(
        self, request: ChatRequest, context: grpc.aio.ServicerContext[ChatRequest, ChatResponse]
    ) -> ChatResponse:
        async with contextlib.aclosing(self._run(request, context)) as events:
            async for event in events:
                if event.HasField("done"):
                    response = event.done
                    if response.HasField("error"):
                        err = response.error
                        code = _STATUS_BY_ERROR.get(err.code, grpc.StatusCode.INTERNAL)
                        await context.abort(code, f"{err.stage}: {err.code}: {err.message}")
                    return response
        await context.abort(grpc.StatusCode.INTERNAL, "the event stream ended without a response")
        raise AssertionError("unreachable")

    async def StreamChat(
        self, request: ChatRequest, context: grpc.aio.ServicerContext[ChatRequest, ProgressEvent]
    ) -> AsyncIterator[ProgressEvent]:
        async with contextlib.aclosing(self._run(request, context)) as events:
            async for event in events:
                yield event

    async def _run(
        self, request: ChatRequest, context: grpc.aio.ServicerContext[ChatRequest, object]
    ) -> AsyncGenerator[ProgressEvent, None]:
        """Publishes the request and yields its events until `done`."""
        await self._validate(request, context)
        request.request_id = request.request_id or uuid.uuid4().hex
        request_id_var.set(request.request_id)
        metadata = dict(context.invocation_metadata() or ())
        continue_trace(str(metadata.get("traceparent", "")))
        if not request.HasField("created_at"):
            request.created_at.GetCurrentTime()
        # Subscribe before publishing; the stream also replays, so nothing is missed either way.
        sub = await self._js.subscribe(
            subjects.event(request.request_id),
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
        )
        try:
            await bus.publish(self._js, subjects.REQUEST, request, msg_id=request.request_id)
            deadline = asyncio.get_running_loop().time() + REQUEST_TIMEOUT_S
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    ERRORS.labels("planner", "deadline").inc()
                    await context.abort(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"request {request.request_id} got no response in {REQUEST_TIMEOUT_S}s",
                    )
                try:
                    msg = await sub.next_msg(timeout=min(remaining, 5.0))
                except NatsTimeoutError:
                    continue
                try:
                    event = ProgressEvent.FromString(msg.data)
                except DecodeError:
                    log.warning("skipped an undecodable message on %s", msg.subject)
                    continue
                yield event
                if event.HasField("done"):
                    return
        finally:
            await sub.unsubscribe()

    async def _validate(
        self, request: ChatRequest, context: grpc.aio.ServicerContext[ChatRequest, object]
    ) -> None:
        """Checks the request, and replaces each attachment with what the store holds for it."""
        if request.request_id and not subjects.valid_request_id(request.request_id):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "request_id: 1 to 64 letters, digits, '-' or '_' (or empty, to get one)",
            )
        if not request.messages:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "messages: must hold at least one message"
            )
        if not request.messages[-1].content.strip():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"messages[{len(request.messages) - 1}].content: the last message is empty",
            )
        size = request.ByteSize()
        if size > MAX_REQUEST_BYTES:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"messages: the request is {size} bytes, over the {MAX_REQUEST_BYTES}-byte "
                "limit; send large inputs with UploadArtifact",
            )
        for i, message in enumerate(request.messages):
            for j, artifact in enumerate(message.artifacts):
                try:
                    artifact.CopyFrom(await self._store.info(artifact.id))
                except ArtifactNotFound as e:
                    await context.abort(
                        grpc.StatusCode.NOT_FOUND, f"messages[{i}].artifacts[{j}].id: {e}"
                    )

    async def UploadArtifact(
        self,
        request_iterator: AsyncIterator[ArtifactChunk],
        context: grpc.aio.ServicerContext[ArtifactChunk, ArtifactRef],
    ) -> ArtifactRef:
        name, media_type, parts, size = "", "", [], 0
        async for chunk in request_iterator:
            name = name or chunk.name
            media_type = media_type or chunk.media_type
            size += len(chunk.data)
            if size > self._max_upload:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"data: the upload exceeds the {self._max_upload}-byte limit",
                )
            parts.append(chunk.data)
        if not name:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name: the first chunk needs it")
        return await self._store.put(b"".join(parts), name, media_type or None)

    async def DownloadArtifact(
        self,
        request: DownloadArtifactRequest,
        context: grpc.aio.ServicerContext[DownloadArtifactRequest, ArtifactChunk],
    ) -> AsyncIterator[ArtifactChunk]:
        try:
            ref, data = await self._store.get(request.id)
        except ArtifactNotFound as e:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"id: {e}")
            return
        for offset in range(0, max(len(data), 1), CHUNK_BYTES):
            chunk = ArtifactChunk(data=data[offset : offset + CHUNK_BYTES])
            if offset == 0:
                chunk.name, chunk.media_type = ref.name, ref.media_type
            yield chunk

    async def ListModels(
        self,
        request: ListModelsRequest,
        context: grpc.aio.ServicerContext[ListModelsRequest, ListModelsResponse],
    ) -> ListModelsResponse:
        workers = self._registry.serving(request.task) if request.task else self._registry.live()
        return ListModelsResponse(workers=workers)


async def start_grpc(
    rt: Runtime, store: ArtifactStore, registry: WorkerRegistry
) -> grpc.aio.Server:
    max_message = 4 * 1024 * 1024
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
        ]
    )
    chorus_pb2_grpc.add_ChorusServicer_to_server(ChorusApi(rt, store, registry), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_name = chorus_pb2.DESCRIPTOR.services_by_name["Chorus"].full_name
    reflection.enable_server_reflection(
        [service_name, health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    if server.add_insecure_port(rt.settings.grpc_addr) == 0:
        raise OSError(f"cannot listen on CHORUS_GRPC_ADDR={rt.settings.grpc_addr}")
    await server.start()
    for name in ("", service_name):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("gRPC listening on %s", rt.settings.grpc_addr)
    return server
