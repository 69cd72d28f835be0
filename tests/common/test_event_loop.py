"""The services run on uvloop where it is installed, and on the stock loop silently where not."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from services.common.runtime import event_loop_factory, run_loop
from services.common.settings import Settings


def _loop_module(**kwargs: bool) -> str:
    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    run_loop(main(), **kwargs)
    return seen[0]


def test_uvloop_runs_the_service_where_installed() -> None:
    assert event_loop_factory() is uvloop.new_event_loop
    assert _loop_module().startswith("uvloop")


def test_chorus_uvloop_0_keeps_the_stock_loop() -> None:
    settings = Settings.from_env({"CHORUS_UVLOOP": "0"})
    assert settings.uvloop is False and Settings.from_env({}).uvloop is True
    assert _loop_module(uvloop=settings.uvloop).startswith("asyncio")


def test_without_uvloop_the_stock_loop_runs_silently(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # `import uvloop` now fails
    assert event_loop_factory() is None
    assert _loop_module().startswith("asyncio")
    assert not caplog.records
