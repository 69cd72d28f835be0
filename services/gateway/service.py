"""The gateway: the gRPC API and the HTTP API (OpenAI-compatible, web UI) over one front door.

It consumes nothing from the bus: it publishes requests and follows their events through one
subscription per replica (`router`). The planner process hosts it by default; `chorus serve
gateway` runs it alone at the edge.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from typing import Any

from services.common import bus
from services.common.artifacts import ArtifactStore
from services.common.http_server import HttpServer
from services.common.runtime import Runtime
from services.common.workers import WorkerRegistry
from services.gateway.config import GatewayConfig
from services.gateway.frontdoor import FrontDoor, Limits
from services.gateway.grpc_api import start_grpc
from services.gateway.http_api import HttpApi
from services.gateway.owners import RequestOwners
from services.gateway.router import EventRouter

log = logging.getLogger(__name__)


async def start(rt: Runtime, stack: AsyncExitStack) -> None:
    """Serves both APIs until the stack closes."""
    config = GatewayConfig.from_env(rt.settings.env)
    addrs = {"CHORUS_GRPC_ADDR": rt.settings.grpc_addr}
    addrs["CHORUS_OPENAI_ADDR"] = rt.settings.openai_addr
    config.check_exposure(addrs)
    if config.api_keys is None:
        log.warning(
            "no API keys (CHORUS_API_KEYS unset): every caller is anonymous; serving %s",
            "any address (CHORUS_INSECURE=1)" if config.insecure else "loopback only",
        )
    store = await ArtifactStore.open(
        rt.js, rt.settings.stream_replicas, rt.settings.artifact_max_bytes
    )
    owners = await RequestOwners.open(rt.js, rt.settings.stream_replicas)
    registry = await WorkerRegistry.watch(
        rt.js, rt.settings.worker_ttl_s, rt.settings.stream_replicas
    )
    stack.push_async_callback(registry.stop)
    router = EventRouter(rt.nc, rt.js)
    await router.start()
    stack.push_async_callback(router.stop)
    limits = Limits(config.max_requests, config.max_requests_per_key)
    front = FrontDoor(rt.js, router, store, owners, limits)
    stack.push_async_callback(front.close)
    server = await start_grpc(rt, front, registry, config)
    stack.push_async_callback(server.stop, 5.0)
    if rt.settings.openai_addr:
        app = HttpApi(front, config).app()
        http = HttpServer(app, rt.settings.openai_addr, "CHORUS_OPENAI_ADDR")
        await http.start()
        log.info("HTTP (OpenAI-compatible API and web UI) on http://%s/", rt.settings.openai_addr)
        stack.push_async_callback(http.stop)


async def build(rt: Runtime, stack: AsyncExitStack) -> list[bus.Consumer[Any]]:
    await start(rt, stack)
    return []
