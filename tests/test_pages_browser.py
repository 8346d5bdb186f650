"""The owner's pages in a real browser: Debian's chromium through its driver (selenium).

The owner opens a notice's link, reads the page in their language, presses the button and
reads the result; a GET-only visit (what mail scanners do) changes nothing; tampered, foreign
and expired links show the refusal page. Skipped when chromium or chromium-driver is missing,
unless POLICY_SERVER_REQUIRE_BROWSER=1 (CI) makes that a failure.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pages_support import ABROAD, ALLOWED, REFUSED, SECRET, Running, running, unusual_notice

from policy_server.service import keys
from policy_server.store.base import Answer, Contact
from policy_server.web.tokens import make_token

__all__ = ["running"]  # fixture

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    if CHROMIUM is None or DRIVER is None:
        reason = (
            "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        )
        if os.environ.get("POLICY_SERVER_REQUIRE_BROWSER") == "1":
            pytest.fail(reason + "; POLICY_SERVER_REQUIRE_BROWSER=1")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # the tests may run as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chromium'}",
        "--lang=en-US",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The browser, driven from the test's event loop: each blocking call in a thread, so the
    service on this loop goes on answering."""

    def __init__(self, driver: Any) -> None:
        self.driver = driver

    async def open(self, url: str) -> None:
        await asyncio.to_thread(self.driver.get, url)

    async def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return await asyncio.to_thread(self.driver.find_element, By.CSS_SELECTOR, css)

    async def all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        found: list[Any] = await asyncio.to_thread(self.driver.find_elements, By.CSS_SELECTOR, css)
        return found

    async def text(self, css: str) -> str:
        element = await self.find(css)
        return str(await asyncio.to_thread(lambda: element.text))

    async def click(self, css: str) -> None:
        element = await self.find(css)
        await asyncio.to_thread(element.click)
        # the result page replaces this one: wait for it (bounded), not a fixed time
        until = time.monotonic() + 15
        while not await self.all("#result, #refused"):
            assert time.monotonic() < until, "no result page"
            await asyncio.sleep(0.05)

    async def script(self, code: str) -> Any:
        return await asyncio.to_thread(self.driver.execute_script, code)


async def _deny_flow(svc: Running, page: Page, login: str, language: str) -> None:
    notice = await unusual_notice(svc, login)
    await page.open(notice["links"]["deny"])
    assert await page.script("return document.documentElement.lang") == language
    # nothing but the page itself was loaded, and its style applied (the CSP allows it)
    assert await page.script("return performance.getEntriesByType('resource').length") == 0
    deny = await page.find("#deny")
    colour = await asyncio.to_thread(deny.value_of_css_property, "background-color")
    assert colour in ("rgba(179, 38, 30, 1)", "rgb(179, 38, 30)")
    assert not await page.all("input[type=password]")
    assert not await page.all("#confirm")
    assert await svc.allow(login, ABROAD) == ALLOWED
    await page.click("#deny")
    result = await page.find("#result")
    assert await asyncio.to_thread(result.get_attribute, "data-result") == "denied"
    assert await svc.allow(login, ABROAD) == REFUSED
    answer = await svc.client.app[keys.STORE].answer_to(notice["id"])
    assert answer is not None and answer.answer is Answer.DENIED


async def test_an_owner_denies_in_english(
    running: Callable[..., Awaitable[Running]], browser: Any
) -> None:
    svc = await running()
    await svc.client.app[keys.STORE].upsert_contacts(
        [Contact("dave@example.jp", language="en", timezone="Europe/London")], time.time()
    )
    page = Page(browser)
    await _deny_flow(svc, page, "dave@example.jp", "en")
    assert "Logins to your account from this network are refused" in await page.text("#result")
    assert "Change it now" in await page.text("#change-password")
    assert "never asks for your password" in await page.text("#no-password")


async def test_an_owner_denies_in_japanese(
    running: Callable[..., Awaitable[Running]], browser: Any
) -> None:
    svc = await running()
    page = Page(browser)
    await _deny_flow(svc, page, "erin@example.jp", "ja")
    assert "拒否します" in await page.text("#result")
    assert "パスワードをお尋ねすることはありません" in await page.text("#no-password")


async def test_an_owner_confirms_and_the_page_says_so(
    running: Callable[..., Awaitable[Running]], browser: Any
) -> None:
    svc = await running()
    notice = await unusual_notice(svc, "frank@example.jp")
    page = Page(browser)
    await page.open(notice["links"]["confirm"])
    assert "アメリカ合衆国" in await page.text("#access-country")
    assert "Example Hosting US" in await page.text("#access-provider")
    rows = await page.all("#recent tr")
    assert len(rows) == 3  # a heading and the two origins of the last 30 days
    await page.click("#confirm")
    result = await page.find("#result")
    assert await asyncio.to_thread(result.get_attribute, "data-result") == "confirmed"
    store = svc.client.app[keys.STORE]
    answer = await store.answer_to(notice["id"])
    assert answer is not None and answer.answer is Answer.CONFIRMED
    assert svc.client.app[keys.BLOCKS].of("frank@example.jp") is None
    # the page again: the answer, and only the button that may still change it
    await page.open(notice["links"]["confirm"])
    assert await page.all("#answered") and not await page.all("#confirm")


async def test_a_scanner_visit_changes_nothing(
    running: Callable[..., Awaitable[Running]], browser: Any
) -> None:
    svc = await running()
    notice = await unusual_notice(svc, "gina@example.jp")
    page = Page(browser)
    for url in (notice["links"]["confirm"], notice["links"]["deny"], notice["links"]["deny"]):
        await page.open(url)
        assert await page.all("form")
    assert await svc.client.app[keys.STORE].answer_to(notice["id"]) is None
    assert svc.client.app[keys.BLOCKS].of("gina@example.jp") is None
    assert await svc.allow("gina@example.jp", ABROAD) == ALLOWED


async def test_tampered_foreign_and_expired_links_are_refused(
    running: Callable[..., Awaitable[Running]], browser: Any
) -> None:
    svc = await running()
    notice = await unusual_notice(svc, "hank@example.jp")
    base, _, token = notice["links"]["deny"].partition("?t=")
    tampered = token[:10] + ("B" if token[10] == "A" else "A") + token[11:]
    foreign = make_token(
        "a-secret-of-another-installation-0123456789",
        notice["id"],
        "hank@example.jp",
        "deny",
        int(time.time()) + 3600,
    )
    expired = make_token(SECRET, notice["id"], "hank@example.jp", "deny", int(time.time()) - 60)
    page = Page(browser)
    for bad, reason in ((tampered, "invalid"), (foreign, "invalid"), (expired, "expired")):
        await page.open(f"{base}?t={bad}")
        refused = await page.find("#refused")
        assert await asyncio.to_thread(refused.get_attribute, "data-reason") == reason
        assert not await page.all("form")
    assert await svc.client.app[keys.STORE].answer_to(notice["id"]) is None
    assert await svc.allow("hank@example.jp", ABROAD) == ALLOWED


async def test_an_owner_turns_notices_off_and_declares_a_trip(
    running: Callable[..., Awaitable[Running]], browser: Any
) -> None:
    svc = await running()
    store = svc.client.app[keys.STORE]
    notice = await unusual_notice(svc, "hana@example.jp")
    page = Page(browser)
    await page.open(notice["links"]["confirm"])
    state = await page.find("#notices-state")
    assert await asyncio.to_thread(state.get_attribute, "data-notices") == "on"
    # looking changed nothing
    assert (await store.settings("hana@example.jp")).notices is True
    await page.click("#notices-off")
    result = await page.find("#result")
    assert await asyncio.to_thread(result.get_attribute, "data-result") == "saved"
    assert (await store.settings("hana@example.jp")).notices is False
    await page.open(notice["links"]["confirm"])
    state = await page.find("#notices-state")
    assert await asyncio.to_thread(state.get_attribute, "data-notices") == "off"
    country = await page.find("#trip-country")
    await asyncio.to_thread(country.send_keys, "fr")
    await page.script("document.getElementById('trip-until').value = '2999-12-31'")
    await page.click("#trip-declare")
    result = await page.find("#result")
    assert await asyncio.to_thread(result.get_attribute, "data-result") == "saved"
    chosen = await store.settings("hana@example.jp")
    # through the whole last day, in the owner's time zone (here [message] timezone's)
    end = datetime(3000, 1, 1, tzinfo=ZoneInfo("Asia/Tokyo")).timestamp()
    assert (chosen.notices, chosen.trip_country, chosen.trip_until) == (False, "FR", end)
    await page.open(notice["links"]["confirm"])
    assert "フランス" in await page.text("#trip-state")
    assert "2999-12-31" in await page.text("#trip-state")
    assert not await page.all("input[type=password]")
    # and both undone through the page
    await page.click("#trip-end")
    await page.open(notice["links"]["confirm"])
    await page.click("#notices-on")
    chosen = await store.settings("hana@example.jp")
    assert (chosen.notices, chosen.trip_country, chosen.trip_until) == (True, None, None)
    await page.open(notice["links"]["confirm"])
    state = await page.find("#notices-state")
    assert await asyncio.to_thread(state.get_attribute, "data-notices") == "on"
    assert await page.all("#trip-declare")
    # none of it was an answer to the notice
    assert await store.answer_to(notice["id"]) is None
