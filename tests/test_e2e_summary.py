"""A long call through the real server with a low summary trigger: context stays bounded, nothing is lost."""

from __future__ import annotations

import re

from callbot.caller.simulator import HangUp, Say, Silence, WaitForAssistant
from callbot.testing.fake_openai_http import FakeOpenAIControl
from callbot.testing.fake_realtime import Script
from tests.e2e_helpers import fake_summary_model, running_rig, speech

TURNS = 16  # caller turns; with the replies that makes 32+ conversation turns
TRIGGER = 220


WORDS = [
    "apples",
    "bread",
    "cheese",
    "dates",
    "eggs",
    "figs",
    "grapes",
    "honey",
    "ice",
    "jam",
    "kale",
    "lemons",
    "milk",
    "nuts",
    "oats",
    "pears",
]


def _script() -> Script:
    # Only the first turn carries facts, so the (fact-preserving) fake summary stays short.
    transcripts = ["My name is Ana Lopez and my order number is 88314."]
    transcripts += [f"do you sell {word}?" for word in WORDS[1:TURNS]]
    return Script(
        greeting="Hi, Acme here.",
        user_transcripts=transcripts,
        replies=[f"yes, we sell {word}." for word in WORDS[:TURNS]],
        realtime_factor=0.0,
    )


async def test_long_call_is_summarised_at_the_root_and_keeps_every_fact() -> None:
    control = FakeOpenAIControl()
    async with (
        fake_summary_model(control) as summariser,
        running_rig(
            _script(),
            summariser=summariser,
            summary_enabled=True,
            summary_trigger_tokens=TRIGGER,
            keep_last_turns=2,
            transcript_wait_ms=500,
        ) as rig,
    ):
        steps: list[object] = [WaitForAssistant(timeout_s=10, quiet_ms=2000)]
        for n in range(TURNS):
            steps += [Say(speech(500, seed=n)), Silence(1800)]
        steps.append(HangUp())
        await rig.caller(speed=4.0).run(steps)  # type: ignore[arg-type]
        fake_session = rig.fake.sessions[0]
        assert rig.fake.violations == []
        server_items = [item["id"] for item in fake_session.items]

    record = rig.observer.ended[0]
    assert record.summaries, "no summary was inserted"
    # Every turn is in the record, verbatim, in order: 1 greeting + TURNS x (user, assistant).
    assert len(record.transcript) == 1 + 2 * TURNS
    user_texts = [e.text for e in record.transcript if e.role == "user"]
    assert user_texts == _script().user_transcripts
    # The summary item sits at the root of the server's conversation ...
    last = record.summaries[-1]
    assert server_items[0] == last.summary_id
    # ... and exactly the summarised items were deleted: what is left is the summary plus the
    # turns that no summary folded.
    folded = {i for s in record.summaries for i in s.folded_item_ids}
    unfolded = [e.item_id for e in record.transcript if e.item_id not in folded]
    assert server_items == [last.summary_id, *unfolded]
    # Facts from the first turn survive in the latest (rolled-up) summary.
    assert "88314" in last.text and "Ana Lopez" in last.text
    # After the first summary, every response's context stayed below trigger + one turn.
    first_at = record.summaries[0].at_ms
    tokens_after = [s.tokens_after for s in record.summaries if s.tokens_after is not None]
    assert tokens_after and max(tokens_after) < TRIGGER + 60
    assert first_at > 0
    # The summariser was called with transcripts as data, never with empty caller turns.
    prompts = [r["messages"][-1]["content"] for r in control.requests]
    assert prompts and all(not re.search(r"Caller: \n", p) for p in prompts)
