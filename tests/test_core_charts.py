"""The context chart and the dashboard's bars: SVG with its marks, a text alternative, escaping."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest

from callbot.core.charts import Mark, Point, bar_chart_svg, call_marks, call_points, context_chart_svg
from callbot.core.record import CallInfo, CallRecord, ResponseUsage, SummaryEvent, TranscriptEntry
from tests.pictures_helpers import long_call

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # well-formed XML, or this raises


def test_a_call_gives_summary_and_barge_in_marks_in_time_order() -> None:
    record = CallRecord(
        info=CallInfo("CA1", "MZ1"),
        started_at=datetime(2026, 12, 1, tzinfo=UTC),
        transcript=(
            TranscriptEntry(
                "a1", "assistant", "Hello, how…", interrupted=True, heard_ms=1500, started_ms=2000
            ),
            TranscriptEntry("u1", "user", "Stop", started_ms=3400, ended_ms=4000),
            TranscriptEntry("a2", "assistant", "Sure.", started_ms=5000, ended_ms=6000),
        ),
        summaries=(SummaryEvent("s1", 9000, "text", 13000, 4, ("a1", "u1"), 2500),),
        response_usage=(ResponseUsage(1000, 800), ResponseUsage(10000, 2600)),
    )
    marks = call_marks(record)
    assert [(m.kind, m.at_ms) for m in marks] == [("barge_in", 3500), ("summary", 9000)]
    assert marks[1].tokens_before == 13000 and marks[1].tokens_after == 2500
    assert "13,000 → 2,500" in marks[1].label
    assert call_points(record.response_usage) == [Point(1000, 800), Point(10000, 2600)]


def test_the_chart_draws_each_response_the_trigger_and_every_mark() -> None:
    points = [Point(1000, 800), Point(5000, 9000), Point(9000, 13500), Point(12000, 3000)]
    marks = [
        Mark("barge_in", 4000, "barge-in"),
        Mark("summary", 10000, "summary s1", tokens_before=13500, tokens_after=3000),
        Mark("tool", 11000, "tool lookup_order: ok <b>"),  # a hand-made tool mark
    ]
    svg = context_chart_svg(points, marks, 12000, duration_ms=15000)
    root = parse(svg)
    assert root.get("role") == "img"
    assert root.find(f"{SVG}title").text == "Context size per response over the call"
    desc = root.find(f"{SVG}desc").text
    assert "4 responses" in desc and "summary trigger at 12,000" in desc
    assert "1 summaries, 1 barge-ins, 1 tool calls" in desc
    circles = [c for c in root.iter(f"{SVG}circle") if c.get("class") == "point"]
    assert [(int(c.get("data-at-ms")), int(c.get("data-tokens"))) for c in circles] == [
        (p.at_ms, p.input_tokens) for p in points
    ]
    groups = [g for g in root.iter(f"{SVG}g") if (g.get("class") or "").startswith("mark ")]
    assert [(g.get("data-kind"), int(g.get("data-at-ms"))) for g in groups] == [
        ("barge_in", 4000),
        ("summary", 10000),
        ("tool", 11000),
    ]
    trigger = next(g for g in root.iter(f"{SVG}g") if g.get("class") == "trigger")
    assert trigger.get("data-tokens") == "12000"
    # the summary's drop runs from before (higher on screen = smaller y) to after
    summary = groups[1]
    before = next(c for c in summary.iter(f"{SVG}circle") if c.get("class") == "before")
    after = next(c for c in summary.iter(f"{SVG}circle") if c.get("class") == "after")
    assert float(before.get("cy")) < float(after.get("cy"))
    # points later in the call are further right; more tokens are higher up
    xs = [float(c.get("cx")) for c in circles]
    assert xs == sorted(xs)
    assert float(circles[2].get("cy")) < float(circles[0].get("cy"))
    assert "<b>" not in svg and "&lt;b&gt;" in svg  # labels are escaped


def test_a_call_without_usage_says_so_and_stays_valid() -> None:
    root = parse(context_chart_svg([], [], None))
    assert "no per-response usage recorded" in "".join(root.itertext())
    assert not [g for g in root.iter(f"{SVG}g") if g.get("class") == "trigger"]


def test_bars_have_one_group_per_value_and_escape_labels() -> None:
    svg = bar_chart_svg([("2026-12-01", 3), ("<x>", 1.5)], chart_id="c", title="Calls")
    root = parse(svg)
    bars = [g for g in root.iter(f"{SVG}g") if g.get("class") == "bar"]
    assert [(g.get("data-label"), g.get("data-value")) for g in bars] == [("2026-12-01", "3"), ("<x>", "1.5")]
    widths = [float(next(g.iter(f"{SVG}rect")).get("width")) for g in bars]
    assert widths[0] == 2 * widths[1]
    assert "&lt;x&gt;" in svg
    assert "no data" in "".join(parse(bar_chart_svg([], chart_id="e", title="t")).itertext())


def test_a_barge_in_without_speech_times_is_marked_when_the_turn_ended_or_arrived() -> None:
    record = CallRecord(
        info=CallInfo("CA1", "MZ1"),
        started_at=datetime(2026, 12, 1, tzinfo=UTC),
        transcript=(
            TranscriptEntry("a1", "assistant", "Hel…", interrupted=True, at_ms=700, ended_ms=2100),
            TranscriptEntry("a2", "assistant", "Wai…", interrupted=True, at_ms=5000),
        ),
    )
    marks = call_marks(record)
    assert [(m.at_ms, m.label) for m in marks] == [
        (2100, "barge-in: the caller cut the assistant off"),
        (5000, "barge-in: the caller cut the assistant off"),
    ]
    # a summary whose new size is not known yet: drawn at its size before, labelled "?"
    svg = context_chart_svg([], [Mark("summary", 100, "s", tokens_before=0)], None)
    root = parse(svg)
    assert root.find(f".//{SVG}circle[@class='before']") is not None
    assert root.find(f".//{SVG}circle[@class='after']") is None


@pytest.mark.parametrize("turns", [6, 9, 15, 21])
def test_the_long_call_fixtures_summary_marks_sit_on_the_plotted_line(turns: int) -> None:
    """The pictures' fixture (tests/pictures_helpers.long_call) is a record a real call could have
    left: a summary's size before is the context when it was requested, the total of the
    response that triggered it (plan_summary's `conv.context_tokens`, tests/test_summary_policy.py
    checks 1,200 for a response of 1,140 in + 60 out), so it sits on the plotted input line at that
    response, above it by that response's output only; its size after is the first response after
    it, likewise. (It was once 3,000 tokens above the line for the second summary.)"""
    record = long_call("CA1", datetime(2026, 12, 1, tzinfo=UTC), turns=turns)
    points = call_points(record.response_usage)
    by_time = {u.at_ms: u for u in record.response_usage}
    summary_marks = [m for m in call_marks(record) if m.kind == "summary"]
    assert len(summary_marks) == 2
    for mark in summary_marks:
        line = [p for p in points if p.at_ms <= mark.at_ms][-1]  # the line's level at the mark
        after = next(p for p in points if p.at_ms > mark.at_ms)
        assert mark.tokens_before == line.input_tokens + by_time[line.at_ms].output_tokens
        assert 0 <= (mark.tokens_before or 0) - line.input_tokens <= 120
        assert mark.tokens_after == after.input_tokens + by_time[after.at_ms].output_tokens
        assert (mark.tokens_after or 0) < (mark.tokens_before or 0)  # the summary cut the context
    # drawn: each summary's "before" dot within 3 px of the line's point for that response (its
    # 120 output tokens; the old 3,000-token gap was some 60 px on this chart)
    root = parse(context_chart_svg(points, call_marks(record), 5000, duration_ms=turns * 10_000))
    cy = {int(c.get("data-at-ms") or -1): float(c.get("cy") or 0) for c in root.iter(f"{SVG}circle")}
    for mark, g in zip(
        summary_marks, [g for g in root.iter(f"{SVG}g") if g.get("data-kind") == "summary"], strict=True
    ):
        before = next(c for c in g.iter(f"{SVG}circle") if c.get("class") == "before")
        line = [p for p in points if p.at_ms <= mark.at_ms][-1]
        assert abs(float(before.get("cy") or 0) - cy[line.at_ms]) <= 3.0


def test_the_long_call_fixture_has_a_tool_call_as_the_tools_code_records_it() -> None:
    record = long_call("CA1", datetime(2026, 12, 1, tzinfo=UTC), turns=15)
    (tool,) = record.tool_calls
    assert (tool.kind, tool.outcome, tool.name) == ("http", "ok", "lookup_order")
    assert tool.ended_ms is not None and tool.started_ms < tool.ended_ms
    # the response that made the function call ended when the tool started, and the reply after it
    assert tool.started_ms in {u.at_ms for u in record.response_usage}
    assert [m for m in call_marks(record) if m.kind == "tool"] == [
        Mark("tool", tool.started_ms, "tool lookup_order: ok in 0.4 s")
    ]
