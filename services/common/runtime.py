"""Process lifecycle shared by the four services: connect, build, serve, drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from services.common import bus
from services.common.outage import OUTAGE
from services.common.periodic import Periodic
from services.common.roles import STREAM_SETTINGS_OWNER
from services.common.settings import Settings, SettingsError
from services.common.telemetry import HealthServer, configure_logging
from services.common.tracing import configure_tracing

log = logging.getLogger(__name__)
DRAIN_GRACE_S = 10.0
STREAM_CHECK_S = 2.0


@dataclass
class Runtime:
    """What a service's `build` gets: settings and a connected bus."""

    name: str
    settings: Settings
    nc: NATS
    js: JetStreamContext


Build = Callable[[Runtime, AsyncExitStack], Awaitable[list[bus.Consumer[Any]]]]


async def serve(name: str, settings: Settings, build: Build, stop: asyncio.Event) -> None:
    """Runs one service until `stop` is set; every resource is released through one exit stack."""
    async with AsyncExitStack() as stack:
        nc = await bus.connect(settings.nats_url, f"chorus-{name}", settings.nats_auth)
        stack.push_async_callback(_drain, nc)
        js = nc.jetstream()
        # Every service creates the streams; one alone applies changed settings to them.
        update = name == STREAM_SETTINGS_OWNER
        await bus.ensure_streams(
            js, settings.stream_replicas, settings.stream_max_bytes, update=update
        )
        consumers = await build(Runtime(name, settings, nc, js), stack)
        tasks = [asyncio.create_task(c.run()) for c in consumers]

        async def restore_streams() -> None:
            # A consumer that cannot bind may have lost its stream with a restarted server.
            if nc.is_connected and not all(c.running for c in consumers):
                await bus.ensure_streams(
                    js, settings.stream_replicas, settings.stream_max_bytes, update=update
                )

        keeper = Periodic(restore_streams, STREAM_CHECK_S, "stream check")
        keeper.start()
        stack.push_async_callback(keeper.stop)

        def ready() -> bool:
            return nc.is_connected and not OUTAGE.active and all(c.running for c in consumers)

        health = HealthServer(settings.metrics_host, settings.metrics_port, ready)
        await health.start()
        stack.push_async_callback(health.stop)
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]  # uvloop or asyncio
        log.info("%s serving", name, extra={"fields": {"metrics_port": health.port, "loop": loop}})
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
        crashed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
        for consumer in consumers:
            consumer.stop()
        # In-flight messages get a grace period; past it they stay unacked, to be redelivered.
        # A service may consume nothing (the gateway): then there is nothing to drain.
        _, late = await asyncio.wait(tasks, timeout=DRAIN_GRACE_S) if tasks else (set(), set())
        for task in late:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stopped.cancel()
        if crashed:
            raise RuntimeError(f"{name}: a consumer crashed") from crashed[0].exception()
        log.info("%s stopping", name)


def event_loop_factory(wanted: bool = True) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (it is with the services' install), else None:
    the stock asyncio loop, silently. Same API; its I/O costs less CPU per message."""
    if not wanted:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_loop(main: Coroutine[Any, Any, None], *, uvloop: bool = True) -> None:
    """Runs a service's `main` to the end, on uvloop where it is installed and `uvloop` wants it."""
    with asyncio.Runner(loop_factory=event_loop_factory(uvloop)) as runner:
        runner.run(main)


async def _drain(nc: NATS) -> None:
    with contextlib.suppress(Exception):
        await nc.drain()


def main(name: str, build: Build) -> None:
    """Entry point of `python -m services.<name>`: settings from the environment, stop on signal.

    A bad setting, found at start or while building the service (an executor's `--model`),
    ends the process with one line naming it rather than a traceback.
    """
    try:
        settings = Settings.from_env()
        tracer_provider = configure_tracing(name, os.environ)
    except SettingsError as e:
        raise SystemExit(f"chorus {name}: {e}") from e
    configure_logging(name, settings.log_level)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(name, settings, build, stop)

    try:
        run_loop(run(), uvloop=settings.uvloop)
    except SettingsError as e:
        raise SystemExit(f"chorus {name}: {e}") from e
    finally:
        tracer_provider.shutdown()  # sends the spans still queued, bounded by the export timeout
