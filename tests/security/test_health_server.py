"""The metrics and health endpoint under idle and parallel connections (raw sockets)."""

from __future__ import annotations

import asyncio

import httpx

from services.common.telemetry import HealthServer


async def test_an_idle_connection_neither_blocks_health_nor_stays_open() -> None:
    server = HealthServer("127.0.0.1", 0, lambda: True, idle_s=1)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as client:
            assert (await client.get("/healthz")).text == "ok\n"
            assert (await client.get("/readyz")).status_code == 200
            assert "python_info" in (await client.get("/metrics")).text
        # The idle connection is closed by the server (EOF), not left open for ever.
        assert await asyncio.wait_for(reader.read(), timeout=30) == b""
        writer.close()
    finally:
        await server.stop()


def test_the_endpoint_listens_where_it_is_told() -> None:
    from services.common.settings import Settings

    assert Settings.from_env({}).metrics_host == "0.0.0.0"
    assert Settings.from_env({"CHORUS_METRICS_HOST": "127.0.0.1"}).metrics_host == "127.0.0.1"
