"""`callbot demo` end to end: the offline call, its summaries and its ticket, as a newcomer sees them."""

from __future__ import annotations

import io
import re
import wave
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from callbot.adapters.store_sql import SqlTicketStore
from callbot.caller.wavio import read_wav
from callbot.core.charts import call_marks, call_points, context_chart_svg
from callbot.core.cost import DEFAULT_PRICE_TABLE, call_cost, price_table
from callbot.core.ticket_views import TicketFilters
from callbot.demo import CALLER_LINES, run_demo
from callbot.testing import tts
from tests.speech_measure import spectra

SVG = "{http://www.w3.org/2000/svg}"
GLYPHS = {"summary": "S", "barge_in": "B", "tool": "T"}


async def test_demo_runs_a_whole_call_offline_and_prints_transcript_summaries_and_ticket(
    tmp_path: Path,
) -> None:
    out = io.StringIO()
    code = await run_demo(tmp_path, output=tmp_path / "call.wav", out=out)
    text = out.getvalue()
    assert code == 0, text
    assert "OpenAI side simulated" in text
    transcript = text.split("=== Transcript", 1)[1].split("=== Summaries", 1)[0]
    for line in CALLER_LINES:
        assert f"Caller: {line}" in transcript
    # greeting, one reply per line, and the read-back of the line check the agent ran
    assert transcript.count("Assistant:") == len(CALLER_LINES) + 2
    assert "Assistant: Our line check says: " in transcript and "street cabinet" in transcript
    assert "[interrupted]" in transcript  # the scripted barge-in
    tools = text.split("=== Tool calls", 1)[1].split("=== Summaries", 1)[0]
    assert re.search(r'lookup_line\(\{"customer_number": "4471-2290"\}\) ok in \d+\.\ds: \{', tools)
    assert re.search(r"end_call\(.*\) ok in \d+\.\ds: the call was ended", tools)
    assert "the call ended because: agent ended the call: the caller has everything they need" in tools
    assert "Twilio ends the stream: the call was completed through the REST API" in text
    summaries = text.split("=== Summaries inserted during the call", 1)[1].split("=== Ticket", 1)[0]
    assert re.search(r"folded \d+ turns, context \d+ -> \d+ tokens", summaries)
    assert "None" not in summaries  # a size nobody measured is said to be unknown
    assert all(
        re.search(r"-> \d+ tokens|after: unknown \(no response", line)
        for line in summaries.split("\n")[1:-1]
        if line.strip()
    )
    check_times_match_the_call(text)
    assert re.search(r"=== Ticket #\d+ \(complete\)", text)
    assert re.search(
        r"=== Cost \(estimated at gpt-realtime-1.5's list prices\): \$0\.\d{4}; without the summaries", text
    )
    assert "fact: number: 4471-2290" in text and "category: technical" in text
    pcm, rate = read_wav(tmp_path / "call.wav")
    assert rate == 8000 and len(pcm) > 8000 * 20
    await check_the_chart_shows_the_calls_events(tmp_path / "demo.db")
    caller, assistant = stereo_channels(tmp_path / "call.wav")
    if tts.available():  # the dev lock installs it: both sides speak words
        assert "eSpeak NG speaks" in text
        assert spectra(caller).speech_like(), spectra(caller)
        assert spectra(assistant).speech_like(), spectra(assistant)
    else:
        assert "synthetic buzzes" in text


async def check_the_chart_shows_the_calls_events(db: Path) -> None:
    """The whole call through the real server: its ticket's chart has a point per response and a
    mark for every summary and the barge-in; the cost figures come with it."""
    store = await SqlTicketStore.open(f"sqlite+aiosqlite:///{db}")
    try:
        (ticket,) = await store.calls(TicketFilters())
    finally:
        await store.close()
    record = ticket.to_record()
    assert len(record.response_usage) == ticket.usage.responses >= len(CALLER_LINES)
    marks = call_marks(record)
    kinds = [m.kind for m in marks]
    assert kinds.count("summary") == len(record.summaries) >= 2
    assert kinds.count("barge_in") == 1  # the scripted barge-in
    assert kinds.count("tool") == 2 == len(record.tool_calls)  # the line check and end_call
    svg = context_chart_svg(call_points(record.response_usage), marks, 350)
    assert svg.count('class="point"') == len(record.response_usage)
    # every mark drawn, each where its event was: the summaries, the barge-in at the moment the
    # caller cut in (the turn's start plus what was heard), each tool call when it started
    root = ET.fromstring(svg)
    drawn = [
        (g.get("data-kind"), int(g.get("data-at-ms") or -1))
        for g in root.iter(f"{SVG}g")
        if (g.get("class") or "").startswith("mark ")
    ]
    assert drawn == [(m.kind, m.at_ms) for m in marks]
    (cut,) = [e for e in record.transcript if e.interrupted]
    assert cut.started_ms is not None and cut.heard_ms is not None
    expected = {
        *(("summary", s.at_ms) for s in record.summaries),
        ("barge_in", cut.started_ms + cut.heard_ms),
        *(("tool", t.started_ms) for t in record.tool_calls),
    }
    assert sorted(drawn) == sorted(expected) and len(drawn) == len(record.summaries) + 1 + 2
    end_ms = int(root.get("data-end-ms") or 0)
    for g in root.iter(f"{SVG}g"):
        if (g.get("class") or "").startswith("mark "):
            line = g.find(f"{SVG}line")
            assert line is not None
            at_ms = int(g.get("data-at-ms") or -1)
            assert float(line.get("x1") or 0) == pytest.approx(64 + 680 * at_ms / end_ms, abs=0.05)
            glyph = g.find(f"{SVG}text")
            assert (
                glyph is not None
                and glyph.text == {"summary": "S", "barge_in": "B", "tool": "T"}[g.get("data-kind") or ""]
            )
    cost = call_cost(record, price_table(DEFAULT_PRICE_TABLE))
    assert cost.cost_usd is not None and cost.cost_usd > 0 and cost.tokens_saved > 0


def stereo_channels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with wave.open(str(path), "rb") as w:
        assert w.getnchannels() == 2 and w.getsampwidth() == 2
        both = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, 2)
    return both[:, 0], both[:, 1]


def check_times_match_the_call(text: str) -> None:
    """Each turn on the ticket starts when the demo's log saw it begin (both count from the call)."""
    log = text.split("=== Transcript", 1)[0]
    spoken = {
        m["line"]: float(m["at"])
        for m in re.finditer(
            r"^\[\s*(?P<at>[\d.]+)s\] caller speaks(?: over the assistant)?: (?P<line>.+)$", log, re.M
        )
    }
    assistant_starts = [float(m) for m in re.findall(r"^\[\s*([\d.]+)s\] assistant is speaking", log, re.M)]
    turns = re.findall(
        r"^\s+(?P<start>[\d.]+)s-(?P<end>[\d.]+)s\s+(?P<who>Caller|Assistant): (?P<text>.+)$",
        text.split("=== Transcript", 1)[1].split("=== Summaries", 1)[0],
        re.M,
    )
    assert len(turns) == len(CALLER_LINES) * 2 + 2, turns
    starts = [float(start) for start, _, _, _ in turns]
    assert starts == sorted(starts)
    for start, end, who, line in turns:
        assert float(start) < float(end)
        if who == "Caller":
            assert abs(float(start) - spoken[line]) < 0.5, (line, start, spoken[line])
    said = [float(start) for start, _, who, _ in turns if who == "Assistant"]
    # The log starts a burst after 100 ms of silence at the caller, so on a loaded machine a dropout
    # in a reply's first frames logs it twice (CI saw 20.9 and 20.9); the script's turns start
    # seconds apart, so a start within a second of the one before continues that reply.
    replies = [t for i, t in enumerate(assistant_starts) if i == 0 or t - assistant_starts[i - 1] >= 1.0]
    assert len(said) == len(replies), (said, assistant_starts)
    for heard, logged in zip(said, replies, strict=True):
        assert abs(heard - logged) < 0.5, (heard, logged)


async def test_outbound_demo_calls_back_leaves_a_voicemail_and_records_a_busy_line(tmp_path: Path) -> None:
    from callbot.demo import OUTBOUND_CALLER_LINES, run_outbound_demo

    out = io.StringIO()
    code = await run_outbound_demo(tmp_path, out=out)
    text = out.getvalue()
    assert code == 0, text
    tickets = text.split("=== Tickets", 1)[1].split("=== The call-back", 1)[0]
    assert re.search(r"\+15550100001: outcome talked, Twilio completed, \d+ s, answered by human", tickets)
    assert re.search(r"\+15550100002: outcome voicemail_left, .* answered by machine_end_beep", tickets)
    assert "+15550100003: outcome busy, Twilio busy, 0 s" in tickets
    callback = text.split("=== The call-back", 1)[1]
    assert "'case': '4471-2290'" in callback
    for line in OUTBOUND_CALLER_LINES:
        assert f"Callee: {line}" in callback
    assert "Twilio posts /twilio/amd machine_end_beep -> HTTP 204" in text
