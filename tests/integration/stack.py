"""The four services in this test's event loop, against a real NATS server."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from services.cli.cluster import free_port
from services.common.runtime import serve
from services.common.settings import Settings
from services.executor.service import build as build_executor
from services.gateway.service import build as build_gateway
from services.planner.service import build as build_planner
from services.responder.service import build as build_responder
from services.selector.service import build as build_selector

# An executor with only the built-in canny operation: starts in milliseconds.
CANNY_ONLY = {
    "CHORUS_EXECUTOR_DEFAULTS": "0",
    "CHORUS_EXECUTOR_MODELS": "canny-control=builtin:canny",
}

BUILDS: dict[str, Any] = {
    "planner": build_planner,  # hosting the gateway unless CHORUS_PLANNER_HOSTS_GATEWAY=0
    "selector": build_selector,
    "executor": build_executor,
    "responder": build_responder,
}
STAGES = tuple(BUILDS)
# The gateway on its own, as `chorus serve gateway` runs it at the edge.
GATEWAY_APART = {"CHORUS_PLANNER_HOSTS_GATEWAY": "0"}
WITH_GATEWAY_APART = ("gateway", *STAGES)
BUILDS["gateway"] = build_gateway


@contextlib.asynccontextmanager
async def running_stack(
    nats_url: str,
    env: Mapping[str, str] | None = None,
    services: tuple[str, ...] = STAGES,
    passwords: Mapping[str, str] | None = None,
    logins: Mapping[str, Mapping[str, str]] | None = None,
) -> AsyncIterator[Settings]:
    """The services on `nats_url`; with `passwords` (role -> password), each as its role, or
    with `logins` (service -> its login's variables, such as `CHORUS_NATS_CREDS`)."""
    common = {
        "CHORUS_NATS_URL": nats_url,
        "CHORUS_GRPC_ADDR": f"127.0.0.1:{free_port()}",
        "CHORUS_WORKER_TTL": "3",
        **(env or {}),
    }
    settings = Settings.from_env(common)

    def of(name: str) -> Settings:
        if logins is not None:
            return Settings.from_env({**common, **logins[name]})
        if passwords is None:
            return settings
        role = {"CHORUS_NATS_USER": name, "CHORUS_NATS_PASSWORD": passwords[name]}
        return Settings.from_env({**common, **role})

    stop = asyncio.Event()
    tasks = [asyncio.create_task(serve(n, of(n), BUILDS[n], stop)) for n in services]
    await asyncio.sleep(0)
    try:
        await _until_ready(tasks)
        yield settings
    finally:
        stop.set()
        _, pending = await asyncio.wait(tasks, timeout=30)
        assert not pending, "a service did not stop within 30 s of being asked to"


async def _until_ready(tasks: list[asyncio.Task[None]]) -> None:
    # Services are ready once their consumers pull; give them a moment and surface crashes.
    for _ in range(50):
        for task in tasks:
            if task.done() and task.exception():
                raise task.exception()  # type: ignore[misc]
        await asyncio.sleep(0.1)
