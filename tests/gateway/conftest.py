"""A front door on a real NATS server, for the tests that call it directly."""

from __future__ import annotations

from collections.abc import AsyncIterator

import nats
import pytest_asyncio

from services.common import bus
from services.common.artifacts import ArtifactStore
from services.gateway.frontdoor import FrontDoor, Limits
from services.gateway.owners import RequestOwners
from services.gateway.router import EventRouter


@pytest_asyncio.fixture
async def door(nats_url: str) -> AsyncIterator[FrontDoor]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await bus.ensure_streams(js)
    owners = await RequestOwners.open(js)
    router = EventRouter(nc, js)
    await router.start()
    front = FrontDoor(js, router, await ArtifactStore.open(js), owners, Limits(8, 1))
    yield front
    await front.close()
    await router.stop()
    await nc.close()
