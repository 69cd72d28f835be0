"""The web UI of a gateway with API keys, in a real browser: it asks for the key, refuses a
wrong one with the gateway's reason, and with the right one runs a request and shows its
picture, fetched with the key."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, Request, expect

from services.gateway.keys import add_key
from tests.gateway.browser import web_stack
from tests.support import ScriptedLLM, square_png

pytestmark = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]
ANSWER = "Here are the edges of your picture."
TIMEOUT_MS = 60_000


@dataclass
class Site:
    url: str
    token: str
    browser: Browser


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def site(
    module_nats: str, module_llm: ScriptedLLM, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Site]:
    keys_file = tmp_path_factory.mktemp("keys") / "keys"
    token = add_key(keys_file, "alice")
    module_llm.replies = [ANSWER]
    env = {"CHORUS_API_KEYS": str(keys_file)}
    async with web_stack(module_nats, module_llm, env) as (url, browser):
        yield Site(url, token, browser)


async def _open(site: Site) -> tuple[Page, list[Request]]:
    page = await site.browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    calls: list[Request] = []
    page.on("request", lambda r: calls.append(r) if "/v1/" in r.url else None)
    await page.goto(site.url)
    return page, calls


async def test_the_page_asks_for_the_key_refuses_a_wrong_one_and_runs_with_the_right_one(
    site: Site, tmp_path: Path
) -> None:
    page, calls = await _open(site)
    form = page.locator("#key-form")
    await expect(form).to_be_visible()  # asked as the page opens: the gateway answered 401
    await expect(page.locator("#key-prompt")).to_have_text("This Chorus needs an API key.")
    await page.screenshot(path=tmp_path / "asked.png", full_page=True)

    await page.fill("#api-key", "chorus_" + "x" * 43)
    await page.click("#use-key")
    await expect(page.locator("#key-error")).to_have_text(
        "Refused: the API key is not known (revoked, or a typo)"
    )
    await page.fill("#api-key", "not a key")
    await page.click("#use-key")
    await expect(page.locator("#key-error")).to_contain_text("is not a chorus_... token")
    await expect(form).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('chorus.apiKey')") is None

    await page.fill("#api-key", site.token)
    await page.click("#use-key")
    await expect(form).to_be_hidden()
    await expect(page.locator("#forget-key")).to_be_visible()

    picture = tmp_path / "square.png"
    picture.write_bytes(square_png())
    await page.set_input_files("#files", str(picture))
    await page.fill("#prompt", "Find the edges in this picture")
    await page.click("#send")
    await expect(page.locator(".turn.assistant .task").first).to_have_attribute(
        "data-status", "succeeded"
    )
    await expect(page.locator(".turn.assistant .answer")).to_contain_text(ANSWER)
    image = page.locator(".turn.assistant .answer img")
    await expect(image).to_have_attribute("alt", "canny-control-0.png")
    await expect(image).to_have_attribute("src", re.compile(r"^blob:"))
    await page.wait_for_function(
        "() => document.querySelector('.turn.assistant .answer img').naturalWidth === 48"
    )
    await page.screenshot(path=tmp_path / "answered.png", full_page=True)

    # Every call after the key was given carried it, the picture's included; none put it in
    # the address.
    given = [r for r in calls if r.url.endswith("/v1/models")][-1]
    after = calls[calls.index(given) + 1 :]
    assert any("/v1/files/" in r.url for r in after)
    assert any(r.url.endswith("/v1/chat/completions") for r in after)
    for request in after:
        assert request.headers.get("authorization") == f"Bearer {site.token}", request.url
    assert all(site.token not in r.url for r in calls)
    assert site.token not in page.url
    await page.close()


async def test_a_key_refused_later_is_asked_for_again(site: Site) -> None:
    page, _ = await _open(site)
    await page.evaluate("key => sessionStorage.setItem('chorus.apiKey', key)", "chorus_" + "y" * 43)
    await page.reload()
    await expect(page.locator("#key-prompt")).to_have_text(
        "The API key was refused; enter another."
    )
    await expect(page.locator("#key-error")).to_contain_text("not known")
    assert await page.evaluate("sessionStorage.getItem('chorus.apiKey')") is None
    await page.close()
