"""The review pages in a real browser: Debian's headless Chromium driven by selenium."""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI

from callbot.adapters.store_migrate import upgrade_database
from callbot.adapters.store_sql import SqlTicketStore
from callbot.core.record import CallInfo, CallRecord, SummaryEvent, TranscriptEntry
from callbot.core.ticket import TicketStatus
from callbot.testing.fake_openai_http import serve_app_in_thread
from callbot.web.review import review_router

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
USER, PASSWORD = "admin", "browser-test-pw"
START = datetime(2024, 5, 2, 10, 30, tzinfo=UTC)

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)) and not os.environ.get("CI"):
    pytest.skip(
        "headless Chromium is not installed (apt-get install -y chromium chromium-driver); CI must have it",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402  (imported only where the browser exists)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.select import Select  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402


def call(sid: str, started: datetime, lines: list[tuple[str, str]]) -> CallRecord:
    return CallRecord(
        info=CallInfo(sid, "MZ" + sid, "AC1", "+15550123", "+15550199"),
        started_at=started,
        ended_at=started + timedelta(seconds=48),
        transcript=tuple(
            TranscriptEntry(f"{sid}-{i}", role, text, at_ms=i * 4000)  # type: ignore[arg-type]
            for i, (role, text) in enumerate(lines)
        ),
        end_reason="caller hung up",
    )


def summary(title: str, category: str) -> dict[str, object]:
    return {
        "title": title,
        "summary": f"Summary: {title}.",
        "caller_request": "help",
        "outcome": "resolved",
        "category": category,
        "priority": "normal",
        "sentiment": "neutral",
        "action_items": [],
        "facts": [{"label": "error code", "value": "651"}],
        "follow_up_needed": False,
        "language": "en",
    }


async def seed(url: str) -> None:
    await upgrade_database(url)
    store = await SqlTicketStore.open(url)
    await store.upsert_call(
        call("CA1", START, [("user", "My invoice is wrong")]), TicketStatus.PENDING_SUMMARY
    )
    await store.complete("CA1", summary("Invoice dispute", "billing"))
    router_call = call(
        "CA2",
        START + timedelta(hours=1),
        [
            ("assistant", "Hello, how can I help?"),
            ("user", "My router shows error 651 since this morning."),
            ("assistant", "Please unplug the router for ten"),
            ("user", "It works again, thanks!"),
        ],
    )
    router_call = replace(
        router_call,
        transcript=(
            *router_call.transcript[:2],
            replace(router_call.transcript[2], interrupted=True, heard_ms=1800),
            router_call.transcript[3],
        ),
        summaries=(SummaryEvent("s1", 9000, "Router error 651 reported.", 500, 2, ("CA2-0", "CA2-1")),),
    )
    await store.upsert_call(router_call, TicketStatus.PENDING_SUMMARY)
    await store.complete("CA2", summary("Router error 651", "technical"))
    await store.close()


class StoreHolder:
    """Opens the store inside the server's own event loop, as the real app's lifespan does."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.store: SqlTicketStore | None = None

    def get(self) -> SqlTicketStore:
        if self.store is None:
            raise RuntimeError("store not open")
        return self.store

    @asynccontextmanager
    async def lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        self.store = await SqlTicketStore.open(self.url)
        yield
        await self.store.close()


@pytest.fixture
def review_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'tickets.db'}"
    asyncio.run(seed(url))
    holder = StoreHolder(url)
    app = FastAPI(lifespan=holder.lifespan)
    app.include_router(review_router(holder.get, USER, PASSWORD))
    with serve_app_in_thread(app) as base_url:
        yield base_url


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    # Credentials go in a header on every request (DevTools protocol): more robust than
    # user:pw@host URLs, which Chromium does not reuse for the stylesheet request.
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def test_find_a_ticket_by_category_and_read_its_conversation(
    browser: webdriver.Chrome, review_url: str, tmp_path: Path
) -> None:
    wait = WebDriverWait(browser, 10)
    browser.get(review_url + "/tickets")
    wait.until(expected_conditions.presence_of_element_located((By.ID, "tickets")))
    titles = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#tickets td.title a")]
    assert titles == ["Router error 651", "Invoice dispute"]
    assert browser.find_element(By.ID, "ticket-count").text.startswith("2 tickets")

    Select(browser.find_element(By.NAME, "category")).select_by_visible_text("technical")
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    wait.until(expected_conditions.url_contains("category=technical"))
    titles = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#tickets td.title a")]
    assert titles == ["Router error 651"]

    browser.find_element(By.LINK_TEXT, "Router error 651").click()
    wait.until(expected_conditions.presence_of_element_located((By.ID, "transcript")))
    assert browser.find_element(By.ID, "ticket-title").text == "#2 Router error 651"
    assert browser.find_element(By.ID, "ticket-category").text == "technical"
    transcript = browser.find_element(By.ID, "transcript").text
    assert "My router shows error 651 since this morning." in transcript
    assert "interrupted after 1.8 s" in transcript
    assert "in-call summary s1" in transcript and "Router error 651 reported." in transcript
    assert transcript.index("Hello, how can I help?") < transcript.index("It works again, thanks!")

    # The stylesheet loaded under the strict CSP: caller and assistant bubbles sit on opposite sides.
    caller = browser.find_element(By.CSS_SELECTOR, "li.turn.user")
    assistant = browser.find_element(By.CSS_SELECTOR, "li.turn.assistant")
    assert caller.value_of_css_property("align-self") == "flex-start"
    assert assistant.value_of_css_property("align-self") == "flex-end"
    assert assistant.location["x"] > caller.location["x"]
    browser.save_screenshot(str(tmp_path / "ticket.png"))
