"""The gRPC API `chorus.v1.Chorus`: each call becomes a `ChatRequest` on the bus.

Replies are found by request id on `chorus.event.<id>`, so any gateway replica can serve any
call. Exceptions become gRPC status codes here, through the table in `errors`.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, NoReturn

import grpc
from chorus.v1 import chorus_pb2, chorus_pb2_grpc
from chorus.v1.chorus_pb2 import (
    ArtifactChunk,
    CancelResponse,
    DownloadArtifactRequest,
    ListModelsRequest,
    ListModelsResponse,
    WatchChatRequest,
)
from chorus.v1.messages_pb2 import (
    ArtifactRef,
    CancelRequest,
    ChatRequest,
    ChatResponse,
    ProgressEvent,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.runtime import Runtime
from services.common.workers import WorkerRegistry
from services.gateway.auth import Gate, GrpcGate, owner_var
from services.gateway.config import GatewayConfig
from services.gateway.errors import PipelineFailed, RequestError, status_of
from services.gateway.frontdoor import FrontDoor

log = logging.getLogger(__name__)

SPOOL_BYTES = 1024 * 1024  # an upload past this waits on disk, not in memory, until stored


class ChorusApi(chorus_pb2_grpc.ChorusServicer):
    def __init__(self, front: FrontDoor, registry: WorkerRegistry, max_upload: int) -> None:
        self._front = front
        self._registry = registry
        self._max_upload = max_upload

    async def Chat(
        self, request: ChatRequest, context: grpc.aio.ServicerContext[ChatRequest, ChatResponse]
    ) -> ChatResponse:
        async with contextlib.aclosing(await self._run(request, context)) as events:
            async for event in events:
                if event.HasField("done"):
                    response = event.done
                    if response.HasField("error"):
                        failed = PipelineFailed(response.error)
                        await _refuse(context, failed)
                    return response
        await context.abort(grpc.StatusCode.INTERNAL, "the event stream ended without a response")
        raise AssertionError("unreachable")

    async def StreamChat(
        self, request: ChatRequest, context: grpc.aio.ServicerContext[ChatRequest, ProgressEvent]
    ) -> AsyncIterator[ProgressEvent]:
        async with contextlib.aclosing(await self._run(request, context)) as events:
            async for event in events:
                yield event

    async def WatchChat(
        self,
        request: WatchChatRequest,
        context: grpc.aio.ServicerContext[WatchChatRequest, ProgressEvent],
    ) -> AsyncIterator[ProgressEvent]:
        watched = self._front.watch(request.request_id, api="grpc", owner=owner_var.get())
        async with contextlib.aclosing(_aborting(watched, context)) as events:
            async for event in events:
                yield event

    async def _run(
        self, request: ChatRequest, context: grpc.aio.ServicerContext[ChatRequest, object]
    ) -> AsyncGenerator[ProgressEvent, None]:
        metadata = dict(context.invocation_metadata() or ())
        traceparent = str(metadata.get("traceparent", ""))
        try:
            events = await self._front.start(
                request, api="grpc", owner=owner_var.get(), traceparent=traceparent
            )
        except RequestError as e:
            await _refuse(context, e)
        return _aborting(events, context)

    async def Cancel(
        self,
        request: CancelRequest,
        context: grpc.aio.ServicerContext[CancelRequest, CancelResponse],
    ) -> CancelResponse:
        reason = request.reason or "cancelled by the client"
        try:
            await self._front.cancel(
                request.request_id, api="grpc", owner=owner_var.get(), reason=reason
            )
        except RequestError as e:
            await _refuse(context, e)
        return CancelResponse(request_id=request.request_id)

    async def UploadArtifact(
        self,
        request_iterator: AsyncIterator[ArtifactChunk],
        context: grpc.aio.ServicerContext[ArtifactChunk, ArtifactRef],
    ) -> ArtifactRef:
        name, media_type, size = "", "", 0
        with tempfile.SpooledTemporaryFile(SPOOL_BYTES) as spool:
            async for chunk in request_iterator:
                name = name or chunk.name
                media_type = media_type or chunk.media_type
                size += len(chunk.data)
                if size > self._max_upload:
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"data: the upload exceeds the {self._max_upload}-byte limit",
                    )
                spool.write(chunk.data)
            if not name:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, "name: the first chunk needs it"
                )
            spool.seek(0)
            try:
                return await self._front.put_artifact(
                    spool,
                    name,
                    media_type or None,
                    owner_var.get(),
                )
            except RequestError as e:
                await _refuse(context, e)

    async def DownloadArtifact(
        self,
        request: DownloadArtifactRequest,
        context: grpc.aio.ServicerContext[DownloadArtifactRequest, ArtifactChunk],
    ) -> AsyncIterator[ArtifactChunk]:
        try:
            ref, parts = await self._front.artifact(request.id, owner_var.get())
            yield ArtifactChunk(name=ref.name, media_type=ref.media_type)
            async for part in parts:  # as the store reads them: the file is never held whole
                yield ArtifactChunk(data=part)
        except RequestError as e:
            await _refuse(context, e)

    async def ListModels(
        self,
        request: ListModelsRequest,
        context: grpc.aio.ServicerContext[ListModelsRequest, ListModelsResponse],
    ) -> ListModelsResponse:
        workers = self._registry.serving(request.task) if request.task else self._registry.live()
        return ListModelsResponse(workers=workers)


async def _aborting(
    events: AsyncGenerator[ProgressEvent, None], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncGenerator[ProgressEvent, None]:
    """The front door's events; its refusals become gRPC status codes, here and nowhere else."""
    async with contextlib.aclosing(events):
        try:
            async for event in events:
                yield event
        except RequestError as e:
            await _refuse(context, e)


async def _refuse(context: grpc.aio.ServicerContext[Any, Any], e: RequestError) -> NoReturn:
    """The one place a refusal becomes a gRPC status (with `retry-after` for an overload)."""
    retry = () if e.retry_after_s is None else (("retry-after", str(e.retry_after_s)),)
    await context.abort(status_of(e.code).grpc, str(e), trailing_metadata=retry)
    raise AssertionError("unreachable") from e


async def start_grpc(
    rt: Runtime, front: FrontDoor, registry: WorkerRegistry, config: GatewayConfig
) -> grpc.aio.Server:
    max_message = 4 * 1024 * 1024
    server = grpc.aio.server(
        interceptors=[GrpcGate(Gate(config.api_keys))],
        options=[
            ("grpc.max_receive_message_length", max_message),
            ("grpc.max_send_message_length", max_message),
        ],
    )
    api = ChorusApi(front, registry, rt.settings.max_upload_bytes)
    chorus_pb2_grpc.add_ChorusServicer_to_server(api, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_name = chorus_pb2.DESCRIPTOR.services_by_name["Chorus"].full_name
    if config.reflection:
        reflection.enable_server_reflection(
            [service_name, health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
    if config.tls is None:
        port = server.add_insecure_port(rt.settings.grpc_addr)
    else:
        credentials = grpc.ssl_server_credentials(
            [(config.tls.private_key, config.tls.cert_chain)],
            root_certificates=config.tls.client_ca,
            require_client_auth=config.tls.client_ca is not None,
        )
        port = server.add_secure_port(rt.settings.grpc_addr, credentials)
    if port == 0:
        raise OSError(f"cannot listen on CHORUS_GRPC_ADDR={rt.settings.grpc_addr}")
    await server.start()
    for name in ("", service_name):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("gRPC listening on %s", rt.settings.grpc_addr)
    return server
