"""`callbot demo` end to end: the offline call, its summaries and its ticket, as a newcomer sees them."""

from __future__ import annotations

import io
import re
from pathlib import Path

from callbot.demo import CALLER_LINES, run_demo
from callbot.sim.wavio import read_wav


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
    assert transcript.count("Assistant:") == len(CALLER_LINES) + 1  # greeting + one reply per line
    assert "[interrupted]" in transcript  # the scripted barge-in
    summaries = text.split("=== Summaries inserted during the call", 1)[1].split("=== Ticket", 1)[0]
    assert re.search(r"folded \d+ turns, context \d+ -> \d+ tokens", summaries)
    assert re.search(r"=== Ticket #\d+ \(complete\)", text)
    assert "fact: number: 4471-2290" in text and "category: technical" in text
    pcm, rate = read_wav(tmp_path / "call.wav")
    assert rate == 8000 and len(pcm) > 8000 * 20
