"""The web UI in a real browser: the page, the plan drawn live, files shown, Stop, escaping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, expect

from tests.gateway.browser import web_stack
from tests.support import ScriptedLLM, square_png

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]
ANSWER = "Here are the edges of your picture."
TIMEOUT_MS = 60_000


@dataclass
class Site:
    url: str
    llm: ScriptedLLM
    browser: Browser


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def running(module_nats: str, module_llm: ScriptedLLM) -> AsyncIterator[Site]:
    async with web_stack(module_nats, module_llm) as (url, browser):
        yield Site(url, module_llm, browser)


@pytest.fixture
def site(running: Site) -> Site:
    running.llm.replies = [ANSWER]
    running.llm.token_interval_s = 0.0
    return running


async def _open(site: Site, width: int = 1200) -> Page:
    page = await site.browser.new_page(viewport={"width": width, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto(site.url)
    return page


async def test_edges_of_a_picture_with_the_plan_drawn_live(site: Site, tmp_path: Path) -> None:
    picture = tmp_path / "square.png"
    picture.write_bytes(square_png())
    page = await _open(site)
    await page.set_input_files("#files", str(picture))
    await expect(page.locator("#attachments .chip")).to_contain_text("square.png")
    await page.fill("#prompt", "Find the edges in this picture")
    await page.click("#send")
    task = page.locator(".turn.assistant .task").first
    await expect(task).to_contain_text("canny-control")
    await expect(task).to_have_attribute("data-status", "succeeded")
    await expect(task.locator(".model")).to_have_text("builtin:canny")
    await expect(task.locator(".time")).to_contain_text(" s")
    await expect(page.locator(".turn.assistant .answer")).to_contain_text(ANSWER)
    image = page.locator(".turn.assistant .answer img")
    await expect(image).to_have_attribute("alt", "canny-control-0.png")
    for _ in range(600):  # the picture is loaded, from the gateway's file route
        if await image.evaluate("img => img.naturalWidth") == 48:
            break
        await page.wait_for_timeout(100)
    assert await image.evaluate("img => img.naturalWidth") == 48
    await page.screenshot(path=tmp_path / "edges.png", full_page=True)
    # A second turn sends the first as history.
    await page.fill("#prompt", "Thanks!")
    await page.click("#send")
    await expect(page.locator(".turn.assistant .answer")).to_have_count(2)
    await expect(page.locator(".turn.assistant .answer").nth(1)).to_contain_text(ANSWER)
    assert ANSWER in str(site.llm.requests[-1]["messages"])
    await page.close()


async def test_stop_cancels_a_slow_request(site: Site, tmp_path: Path) -> None:
    site.llm.replies = ["word " * 200]
    site.llm.token_interval_s = 0.1  # 20 s of answer
    page = await _open(site)
    await page.fill("#prompt", "Tell me a long story")
    await page.click("#send")
    await expect(page.locator(".turn.assistant .answer")).to_contain_text("word")
    await page.click("#stop")
    await expect(page.locator(".turn.assistant .error")).to_have_text("Cancelled.")
    await expect(page.locator("#stop")).to_be_hidden()
    await expect(page.locator("#send")).to_be_enabled()
    await page.screenshot(path=tmp_path / "stopped.png", full_page=True)
    await page.close()


async def test_markup_in_a_request_or_a_file_name_is_shown_not_run(
    site: Site, tmp_path: Path
) -> None:
    evil = "<img src=x onerror=window.pwned=1>"
    site.llm.replies = [f"You said {evil} <script>window.pwned=2</script>"]
    named = tmp_path / "<img src=x onerror=window.pwned=3>.png"
    named.write_bytes(square_png())
    page = await _open(site, width=390)  # a phone
    await page.set_input_files("#files", str(named))
    await page.fill("#prompt", f"Find the edges {evil}")
    await page.click("#send")
    await expect(page.locator(".turn.user .text")).to_have_text(f"Find the edges {evil}")
    await expect(page.locator(".turn.user .chip")).to_contain_text("onerror=window.pwned=3")
    await expect(page.locator(".turn.assistant .answer")).to_contain_text("<script>")
    await expect(page.locator(".turn.assistant .task").first).to_have_attribute(
        "data-status", "succeeded"
    )
    await expect(page.locator(".turn.assistant .answer img")).to_have_count(1)
    assert await page.evaluate("window.pwned") is None
    # Nothing is wider than the phone.
    assert await page.evaluate("document.scrollingElement.scrollWidth") <= 390
    await page.screenshot(path=tmp_path / "phone.png", full_page=True)
    await page.close()


async def test_a_file_dropped_on_the_page_is_attached(site: Site) -> None:
    page = await _open(site)
    dropped = await page.evaluate_handle(
        """() => {
            const files = new DataTransfer();
            files.items.add(new File(["RIFF"], "voice.wav", {type: "audio/wav"}));
            return files;
        }"""
    )
    await page.dispatch_event("#composer", "drop", {"dataTransfer": dropped})
    await expect(page.locator("#attachments .chip")).to_contain_text("voice.wav")
    await page.close()
