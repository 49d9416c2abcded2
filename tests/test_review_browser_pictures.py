"""The context chart and the dashboard in a real browser (headless Chromium, as
tests/test_review_browser.py drives it), with a screenshot of each page kept under test-artifacts/."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi import FastAPI

from callbot.core.charts import call_marks
from callbot.core.cost import DEFAULT_PRICE_TABLE, call_cost, price_table
from callbot.core.record import CallRecord
from callbot.testing.fake_openai_http import serve_app_in_thread
from callbot.web.review import review_router
from tests.pictures_helpers import seed_day
from tests.test_review_browser import PASSWORD, USER, StoreHolder, browser  # noqa: F401  (fixture)

pytestmark = pytest.mark.browser

from selenium import webdriver  # noqa: E402  (after the skip in test_review_browser)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.wait import WebDriverWait  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
DAY = datetime(2026, 12, 1, tzinfo=UTC)
TABLE = price_table(DEFAULT_PRICE_TABLE)


@pytest.fixture
def day_of_calls(tmp_path: Path) -> Iterator[tuple[str, list[CallRecord]]]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'tickets.db'}"
    records = asyncio.run(seed_day(url, DAY))
    holder = StoreHolder(url)
    app = FastAPI(lifespan=holder.lifespan)
    app.include_router(review_router(holder.get, USER, PASSWORD, prices=TABLE, summary_trigger_tokens=5000))
    with serve_app_in_thread(app) as base_url:
        yield base_url, records


def screenshot(driver: webdriver.Chrome, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    return path


def test_the_chart_renders_and_its_marks_match_the_tickets_events(
    browser: webdriver.Chrome,  # noqa: F811
    day_of_calls: tuple[str, list[CallRecord]],
) -> None:
    base_url, records = day_of_calls
    rec = records[3]  # two summaries, a barge-in and a tool call
    browser.get(f"{base_url}/tickets/4")
    WebDriverWait(browser, 10).until(
        expected_conditions.presence_of_element_located((By.ID, "context-chart"))
    )
    svg = browser.find_element(By.ID, "context-chart")
    assert svg.is_displayed() and svg.size["width"] > 600 and svg.size["height"] > 200
    points = browser.find_elements(By.CSS_SELECTOR, "#context-chart circle.point")
    assert [int(p.get_attribute("data-tokens") or -1) for p in points] == [
        u.input_tokens for u in rec.response_usage
    ]
    # laid out by the browser: later responses further right, the drop after each summary lower
    xs = [p.rect["x"] for p in points]
    assert xs == sorted(xs) and xs[-1] - xs[0] > 400
    marks = browser.find_elements(By.CSS_SELECTOR, "#context-chart g.mark")
    assert [(m.get_attribute("data-kind"), int(m.get_attribute("data-at-ms") or -1)) for m in marks] == [
        (m.kind, m.at_ms) for m in call_marks(rec)
    ]
    kinds = sorted(m.get_attribute("data-kind") or "" for m in marks)
    assert kinds == ["barge_in", "summary", "summary", "tool"]
    # each mark drawn at its time: where the browser put its line is the time's place on the axis
    # (the chart is scaled to the card's width; its plot starts 64 and ends 16 viewBox units in)
    end_ms, scale = int(svg.get_attribute("data-end-ms") or 0), svg.rect["width"] / 760
    for mark in marks:
        line = mark.find_element(By.TAG_NAME, "line")
        assert line.size["height"] > 150  # drawn across the plot
        at_ms = int(mark.get_attribute("data-at-ms") or -1)
        centre = line.rect["x"] + line.rect["width"] / 2 - svg.rect["x"]
        assert abs(centre - scale * (64 + 680 * at_ms / end_ms)) < 2, (mark.get_attribute("data-kind"), at_ms)
    (tool,) = rec.tool_calls
    (tool_mark,) = [m for m in marks if m.get_attribute("data-kind") == "tool"]
    assert int(tool_mark.get_attribute("data-at-ms") or -1) == tool.started_ms
    assert tool_mark.find_element(By.TAG_NAME, "text").text == "T"
    # between the two responses around it: the one that made the function call and the next
    tool_x = tool_mark.find_element(By.TAG_NAME, "line").rect["x"]
    at = [int(p.get_attribute("data-at-ms") or -1) for p in points]
    made_it = max(i for i, ms in enumerate(at) if ms <= tool.started_ms)
    assert points[made_it].rect["x"] <= tool_x + 2 and tool_x < points[made_it + 1].rect["x"]
    (barge_in,) = [m for m in marks if m.get_attribute("data-kind") == "barge_in"]
    (cut,) = [e for e in rec.transcript if e.interrupted]
    assert int(barge_in.get_attribute("data-at-ms") or -1) == (cut.started_ms or 0) + (cut.heard_ms or 0)
    summary_marks = [m for m in marks if m.get_attribute("data-kind") == "summary"]
    for mark, event in zip(summary_marks, rec.summaries, strict=True):
        before = mark.find_element(By.CSS_SELECTOR, "circle.before").rect["y"]
        after = mark.find_element(By.CSS_SELECTOR, "circle.after").rect["y"]
        assert after > before  # fewer tokens after: lower on the chart
        assert f"{event.tokens_before:,} → {event.tokens_after:,}" in (
            mark.find_element(By.TAG_NAME, "title").get_attribute("textContent") or ""
        )
    trigger = browser.find_element(By.CSS_SELECTOR, "#context-chart g.trigger line")
    assert trigger.value_of_css_property("stroke-dasharray") != "none"
    # the text alternative opens without JavaScript and lists the same events
    browser.find_element(By.CSS_SELECTOR, "details.chart-data summary").click()
    rows = browser.find_elements(By.CSS_SELECTOR, "#chart-events tr.event")
    assert [r.get_attribute("data-kind") for r in rows] == [m.kind for m in call_marks(rec)]
    assert all(r.is_displayed() for r in rows)
    cost = call_cost(rec, TABLE)
    assert browser.find_element(By.ID, "cost-usd").text == f"${cost.cost_usd:.4f}"
    browser.find_element(By.CSS_SELECTOR, "details.chart-data summary").click()
    browser.execute_script("document.getElementById('context').scrollIntoView()")
    screenshot(browser, "ticket-page.png")


def test_the_dashboard_shows_a_day_of_simulated_calls(
    browser: webdriver.Chrome,  # noqa: F811
    day_of_calls: tuple[str, list[CallRecord]],
) -> None:
    base_url, records = day_of_calls
    browser.get(f"{base_url}/tickets")
    browser.find_element(By.LINK_TEXT, "dashboard").click()
    WebDriverWait(browser, 10).until(
        expected_conditions.presence_of_element_located((By.ID, "stats-figures"))
    )
    browser.find_element(By.NAME, "since").send_keys("12/01/2026")
    browser.find_element(By.NAME, "until").send_keys("12/01/2026")
    browser.find_element(By.CSS_SELECTOR, "form.filters button[type=submit]").click()
    WebDriverWait(browser, 10).until(expected_conditions.url_contains("since=2026-12-01"))
    assert browser.find_element(By.CSS_SELECTOR, "#stats-figures h2").text.startswith("6 calls")
    bar = browser.find_element(By.CSS_SELECTOR, '#chart-calls-per-day g.bar[data-label="2026-12-01"]')
    assert bar.get_attribute("data-value") == "6"
    assert bar.find_element(By.TAG_NAME, "rect").size["width"] > 100
    categories = browser.find_elements(By.CSS_SELECTOR, "#chart-category g.bar")
    assert {c.get_attribute("data-label"): c.get_attribute("data-value") for c in categories} == {
        "billing": "3", "technical": "2", "uncategorised": "1"
    }  # fmt: skip
    outcomes = browser.find_elements(By.CSS_SELECTOR, "#chart-outcome g.bar")
    assert {c.get_attribute("data-label"): c.get_attribute("data-value") for c in outcomes} == {
        "talked": "4", "transferred": "1", "unknown": "1"
    }  # fmt: skip
    total = sum(call_cost(r, TABLE).cost_usd or 0 for r in records)
    assert browser.find_element(By.ID, "stat-total-cost").text.startswith(f"${total:.4f}")
    assert browser.find_element(By.ID, "stat-follow-ups").text == "3"
    screenshot(browser, "dashboard.png")
