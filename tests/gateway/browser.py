"""Debian's chromium driven by Playwright, for the web UI's tests and its benchmark.

Never `playwright install`: the browser is the system's (`apt-get install chromium`).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from services.cli.cluster import free_port
from tests.integration.stack import CANNY_ONLY, running_stack
from tests.support import ScriptedLLM

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def require_chromium() -> None:
    """Skips where the browser is missing, except on CI, where it must be there."""
    if not CHROMIUM.exists() and not os.environ.get("CI"):
        pytest.skip("no /usr/bin/chromium (apt-get install chromium); CI installs it")


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@asynccontextmanager
async def web_stack(
    nats_url: str, llm: ScriptedLLM, env: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[str, Browser]]:
    """The whole stack serving the web UI (canny only; the rules planner, so that the LLM
    writes only the answer), with `env` on top, and a browser: the page's URL and the browser."""
    require_chromium()
    addr = f"127.0.0.1:{free_port()}"
    stack_env = {
        **CANNY_ONLY,
        "CHORUS_LLM_BASE_URL": llm.base_url,
        "CHORUS_PLANNER": "rules",
        "CHORUS_OPENAI_ADDR": addr,
        **(env or {}),
    }
    async with running_stack(nats_url, stack_env), chromium() as browser:
        yield f"http://{addr}/", browser
