"""`callbot demo` end to end: the offline call, its summaries and its ticket, as a newcomer sees them."""

from __future__ import annotations

import io
import re
from pathlib import Path

from callbot.caller.wavio import read_wav
from callbot.demo import CALLER_LINES, run_demo


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
    assert "fact: number: 4471-2290" in text and "category: technical" in text
    pcm, rate = read_wav(tmp_path / "call.wav")
    assert rate == 8000 and len(pcm) > 8000 * 20


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
    assert len(said) == len(assistant_starts)
    for heard, logged in zip(said, assistant_starts, strict=True):
        assert abs(heard - logged) < 0.5, (heard, logged)
