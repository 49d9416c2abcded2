"""callbot.core.conversation: order, transcripts, interruption, deletion, summaries, usage."""

from __future__ import annotations

from typing import Any

import pytest
from core_helpers import (
    assistant_audio_item,
    item_added,
    item_done,
    system_item,
    usage,
    user_audio_item,
    user_text_item,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from callbot.core.conversation import ConversationState
from callbot.core.record import SummaryEvent, TranscriptEntry, UsageTotals


def add(
    conv: ConversationState,
    item: dict[str, Any],
    previous_item_id: str | None = None,
    at_ms: int = 0,
    *,
    is_summary: bool = False,
) -> None:
    """Feed a validated GA `conversation.item.added` into the state, as CallSession does."""
    event = item_added(item, previous_item_id)
    conv.item_added(event["item"], event["previous_item_id"], at_ms, is_summary=is_summary)


def done(conv: ConversationState, item: dict[str, Any], previous_item_id: str | None = None) -> None:
    conv.item_done(item_done(item, previous_item_id)["item"])


def summary_event(summary_id: str, folded: tuple[str, ...], at_ms: int = 0) -> SummaryEvent:
    return SummaryEvent(
        summary_id=summary_id,
        at_ms=at_ms,
        text=f"summary {summary_id}",
        tokens_before=9000,
        turns_folded=len(folded),
        folded_item_ids=folded,
    )


def ids(turns: list[Any]) -> list[str]:
    return [t.item_id for t in turns]


# ----- ordering ----------------------------------------------------------------------------------


def test_items_are_ordered_by_previous_item_id_not_arrival() -> None:
    conv = ConversationState()
    add(conv, user_audio_item("item_a"), None)
    add(conv, assistant_audio_item("item_b"), "item_a")
    add(conv, user_audio_item("item_c"), "item_b")
    add(conv, user_text_item("item_d", "inserted"), "item_a")  # lands right after a
    assert conv.context == ["item_a", "item_d", "item_b", "item_c"]
    assert ids(conv.turns()) == ["item_a", "item_d", "item_b", "item_c"]
    assert [e.item_id for e in conv.transcript()] == ["item_a", "item_d", "item_b", "item_c"]


def test_root_goes_first_and_unknown_previous_id_appends() -> None:
    conv = ConversationState()
    add(conv, user_audio_item("item_a"), None)
    add(conv, assistant_audio_item("item_b"), "item_a")
    add(conv, system_item("item_root", "context"), "root")
    add(conv, user_text_item("item_x", "orphan"), "item_never_seen")
    assert conv.context == ["item_root", "item_a", "item_b", "item_x"]
    assert ids(conv.turns()) == ["item_root", "item_a", "item_b", "item_x"]
    assert conv.get("item_root") is not None and conv.get("item_root").role == "system"  # type: ignore[union-attr]


def test_a_repeated_added_event_does_not_duplicate_the_turn() -> None:
    conv = ConversationState()
    add(conv, user_audio_item("item_a"), None, at_ms=100)
    add(conv, user_audio_item("item_a"), None, at_ms=900)
    assert conv.context == ["item_a"]
    assert [(e.item_id, e.at_ms) for e in conv.transcript()] == [("item_a", 100)]


def test_item_without_an_id_is_ignored() -> None:
    conv = ConversationState()
    assert conv.item_added({"type": "message", "role": "user", "content": []}, None, 0) is None
    assert conv.context == [] and conv.transcript() == ()


def test_roles_and_arrival_time_are_recorded() -> None:
    conv = ConversationState()
    add(conv, user_audio_item("item_u"), None, at_ms=1200)
    add(conv, assistant_audio_item("item_a"), "item_u", at_ms=1900)
    assert [(e.role, e.at_ms) for e in conv.transcript()] == [("user", 1200), ("assistant", 1900)]


# ----- transcripts -------------------------------------------------------------------------------


def test_user_transcript_after_the_assistant_reply_lands_on_the_right_turn() -> None:
    conv = ConversationState()
    add(conv, user_audio_item("item_u1"), None, at_ms=1000)
    add(conv, assistant_audio_item("item_a1"), "item_u1", at_ms=1500)
    conv.assistant_transcript_delta("item_a1", "Sure, ")
    conv.assistant_transcript_delta("item_a1", "Friday works.")
    done(conv, assistant_audio_item("item_a1", "Sure, Friday works.", "completed"), "item_u1")
    assert conv.transcript()[0].status == "pending"
    assert conv.transcript()[0].text is None
    conv.user_transcript("item_u1", "Can I move my cleaning to Friday?")
    assert conv.transcript() == (
        TranscriptEntry("item_u1", "user", "Can I move my cleaning to Friday?", "complete", at_ms=1000),
        TranscriptEntry("item_a1", "assistant", "Sure, Friday works.", "complete", at_ms=1500),
    )


def test_transcription_failure_is_recorded_and_not_overwritten_by_done() -> None:
    conv = ConversationState()
    add(conv, user_audio_item("item_u1"), None)
    conv.user_transcript_failed("item_u1")
    done(conv, user_audio_item("item_u1"))  # item.done carries no transcript
    entry = conv.transcript()[0]
    assert (entry.text, entry.status) == (None, "failed")


def test_failure_after_a_completed_transcript_keeps_the_transcript() -> None:
    conv = ConversationState()
    add(conv, user_audio_item("item_u1"), None)
    conv.user_transcript("item_u1", "hello")
    conv.user_transcript_failed("item_u1")
    entry = conv.transcript()[0]
    assert (entry.text, entry.status) == ("hello", "complete")


def test_user_item_done_with_a_transcript_completes_a_pending_turn() -> None:
    conv = ConversationState()
    add(conv, user_audio_item("item_u1"), None)
    done(conv, user_audio_item("item_u1", transcript="yes please"))
    entry = conv.transcript()[0]
    assert (entry.text, entry.status) == ("yes please", "complete")


def test_text_items_are_complete_on_arrival() -> None:
    conv = ConversationState()
    add(conv, user_text_item("item_t", "[The caller pressed the key 5]"), None)
    assert conv.transcript()[0].text == "[The caller pressed the key 5]"
    assert conv.transcript()[0].status == "complete"


def test_transcripts_for_unknown_items_are_ignored() -> None:
    conv = ConversationState()
    conv.user_transcript("item_nobody", "x")
    conv.user_transcript_failed("item_nobody")
    conv.assistant_transcript_delta("item_nobody", "x")
    conv.assistant_transcript_done("item_nobody", "x")
    conv.interrupted("item_nobody", 10, 20)
    assert conv.transcript() == ()


def test_assistant_transcript_deltas_accumulate_and_done_is_final() -> None:
    conv = ConversationState()
    add(conv, assistant_audio_item("item_a1"), None)
    conv.assistant_transcript_delta("item_a1", "Hel")
    assert conv.transcript()[0].text == "Hel"
    conv.assistant_transcript_delta("item_a1", "lo there")
    assert conv.transcript()[0].text == "Hello there"
    conv.assistant_transcript_done("item_a1", "Hello there!")
    assert conv.transcript()[0].text == "Hello there!"


def test_assistant_item_done_carries_the_final_transcript() -> None:
    conv = ConversationState()
    add(conv, assistant_audio_item("item_a1"), None)
    done(conv, assistant_audio_item("item_a1", "Goodbye.", "completed"))
    assert conv.get("item_a1").done  # type: ignore[union-attr]
    assert conv.transcript()[0].text == "Goodbye."


# ----- interruption ------------------------------------------------------------------------------

LONG = "Your appointment is on Friday at three in the afternoon"


def test_interrupted_turn_keeps_only_the_heard_part_cut_at_a_word() -> None:
    conv = ConversationState()
    add(conv, assistant_audio_item("item_a1"), None)
    conv.assistant_transcript_done("item_a1", LONG)
    conv.interrupted("item_a1", heard_ms=1000, generated_ms=2000)
    entry = conv.transcript()[0]
    assert entry.interrupted is True
    assert entry.heard_ms == 1000
    # Half of 55 characters is 27: "Your appointment is on Frid" -> cut back to the last space.
    assert entry.text == "Your appointment is on…"
    assert conv.get("item_a1").full_text == LONG  # type: ignore[union-attr]


def test_interrupted_turn_ignores_later_transcript_events() -> None:
    conv = ConversationState()
    add(conv, assistant_audio_item("item_a1"), None)
    conv.assistant_transcript_delta("item_a1", "Your appointment is on Friday")
    conv.interrupted("item_a1", heard_ms=600, generated_ms=1200)
    cut = conv.transcript()[0].text
    conv.assistant_transcript_delta("item_a1", " at three")
    conv.assistant_transcript_done("item_a1", LONG)
    done(conv, assistant_audio_item("item_a1", LONG, "incomplete"))
    assert conv.transcript()[0].text == cut
    assert conv.transcript()[0].interrupted


def test_interruption_is_recorded_once() -> None:
    conv = ConversationState()
    add(conv, assistant_audio_item("item_a1"), None)
    conv.assistant_transcript_done("item_a1", LONG)
    conv.interrupted("item_a1", heard_ms=1000, generated_ms=2000)
    first = conv.transcript()[0]
    conv.interrupted("item_a1", heard_ms=10, generated_ms=2000)
    assert conv.transcript()[0] == first


def test_interrupted_after_everything_was_heard_keeps_the_whole_text() -> None:
    conv = ConversationState()
    add(conv, assistant_audio_item("item_a1"), None)
    conv.assistant_transcript_done("item_a1", LONG)
    conv.interrupted("item_a1", heard_ms=2500, generated_ms=2000)
    assert conv.transcript()[0].text == LONG
    assert conv.transcript()[0].interrupted


def test_interrupted_before_anything_was_heard_keeps_nothing() -> None:
    conv = ConversationState()
    add(conv, assistant_audio_item("item_a1"), None)
    conv.assistant_transcript_done("item_a1", LONG)
    conv.interrupted("item_a1", heard_ms=0, generated_ms=2000)
    assert conv.transcript()[0].text == ""


def test_interrupted_with_no_audio_generated_claims_nothing_was_heard() -> None:
    # A turn interrupted before any of its audio existed was not heard at all.
    conv = ConversationState()
    add(conv, assistant_audio_item("item_a1"), None)
    conv.assistant_transcript_delta("item_a1", "Let me check")
    conv.interrupted("item_a1", heard_ms=0, generated_ms=0)
    assert conv.transcript()[0].text == ""


@pytest.mark.parametrize(
    ("text", "heard_ms", "generated_ms"),
    [
        ("Supercalifragilistic is a long word", 100, 1000),  # the cut falls inside the first word
        ("Hello there", 400, 1000),  # "Hell" -> no space to cut back to
    ],
)
def test_interrupted_cut_never_ends_inside_a_word(text: str, heard_ms: int, generated_ms: int) -> None:
    conv = ConversationState()
    add(conv, assistant_audio_item("item_a1"), None)
    conv.assistant_transcript_done("item_a1", text)
    conv.interrupted("item_a1", heard_ms, generated_ms)
    kept = (conv.transcript()[0].text or "").removesuffix("…")
    assert text.startswith(kept)
    assert kept == "" or len(kept) == len(text) or text[len(kept)] == " ", f"cut inside a word: {kept!r}"


_words = st.lists(st.text(alphabet="abcdefghij", min_size=1, max_size=12), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(_words, st.integers(min_value=1, max_value=5000), st.integers(min_value=0, max_value=5000))
def test_interrupted_cut_is_whole_words_and_never_more_than_heard(
    words: list[str], generated_ms: int, heard_ms: int
) -> None:
    text = " ".join(words)
    conv = ConversationState()
    add(conv, assistant_audio_item("item_a1"), None)
    conv.assistant_transcript_done("item_a1", text)
    conv.interrupted("item_a1", heard_ms, generated_ms)
    kept = conv.transcript()[0].text or ""
    if heard_ms >= generated_ms:
        assert kept == text
        return
    assert kept == "" or kept.endswith("…")
    kept = kept.removesuffix("…")
    assert text.startswith(kept)
    assert kept == "" or text[len(kept)] == " ", f"cut inside a word: {kept!r} of {text!r}"
    assert len(kept) <= len(text) * heard_ms / generated_ms  # never claims more than was played


# ----- deletion ----------------------------------------------------------------------------------


def test_deleted_items_leave_the_context_but_stay_in_the_log() -> None:
    conv = ConversationState()
    add(conv, user_audio_item("item_u1"), None)
    add(conv, assistant_audio_item("item_a1"), "item_u1")
    conv.user_transcript("item_u1", "hi")
    deleted = conv.item_deleted("item_u1")
    assert deleted is not None and deleted.in_context is False
    assert conv.context == ["item_a1"]
    assert ids(conv.context_turns()) == ["item_a1"]
    assert [(e.item_id, e.text) for e in conv.transcript()] == [("item_u1", "hi"), ("item_a1", None)]
    assert conv.item_deleted("item_u1") is not None  # a second delete is harmless
    assert conv.context == ["item_a1"]


def test_deleting_an_unknown_item_changes_nothing() -> None:
    conv = ConversationState()
    add(conv, user_audio_item("item_u1"), None)
    assert conv.item_deleted("item_unknown") is None
    assert conv.context == ["item_u1"]


# ----- summaries and the invariant ---------------------------------------------------------------


def four_turns() -> ConversationState:
    conv = ConversationState()
    add(conv, user_audio_item("item_u1"), None)
    add(conv, assistant_audio_item("item_a1"), "item_u1")
    add(conv, user_audio_item("item_u2"), "item_a1")
    add(conv, assistant_audio_item("item_a2"), "item_u2")
    return conv


def test_fresh_conversation_satisfies_the_invariant() -> None:
    assert four_turns().invariant_violations() == []


def test_deleting_without_a_summary_violates_the_invariant() -> None:
    conv = four_turns()
    conv.item_deleted("item_u1")
    problems = conv.invariant_violations()
    assert len(problems) == 1 and "item_u1" in problems[0]


def test_fold_then_delete_keeps_the_invariant() -> None:
    conv = four_turns()
    add(conv, system_item("sum_1", "Summary: caller wants Friday."), "root", is_summary=True)
    conv.fold(summary_event("sum_1", ("item_u1", "item_a1")))
    conv.item_deleted("item_u1")
    conv.item_deleted("item_a1")
    assert conv.invariant_violations() == []
    assert conv.context == ["sum_1", "item_u2", "item_a2"]
    assert ids(conv.summary_items()) == ["sum_1"]
    assert ids(conv.context_turns()) == ["item_u2", "item_a2"]
    # The summary is not a turn of the call; the folded turns still are, naming their summary.
    assert [(e.item_id, e.summary_id) for e in conv.transcript()] == [
        ("item_u1", "sum_1"),
        ("item_a1", "sum_1"),
        ("item_u2", None),
        ("item_a2", None),
    ]
    assert [s.summary_id for s in conv.summaries] == ["sum_1"]


def test_a_rolled_up_summary_replacing_an_older_summary_keeps_coverage() -> None:
    conv = four_turns()
    add(conv, system_item("sum_1", "Summary 1"), "root", is_summary=True)
    conv.fold(summary_event("sum_1", ("item_u1", "item_a1")))
    conv.item_deleted("item_u1")
    conv.item_deleted("item_a1")
    add(conv, system_item("sum_2", "Summary 1 and 2"), "root", is_summary=True)
    conv.fold(summary_event("sum_2", ("sum_1", "item_u2", "item_a2")))
    for item_id in ("sum_1", "item_u2", "item_a2"):
        conv.item_deleted(item_id)
    assert conv.context == ["sum_2"]
    assert conv.invariant_violations() == []
    # u1/a1 still name the summary that folded them; coverage is transitive through sum_2.
    assert [e.summary_id for e in conv.transcript()] == ["sum_1", "sum_1", "sum_2", "sum_2"]


def test_losing_the_rolled_up_summary_breaks_coverage_of_everything_folded() -> None:
    conv = four_turns()
    add(conv, system_item("sum_1", "Summary 1"), "root", is_summary=True)
    conv.fold(summary_event("sum_1", ("item_u1", "item_a1")))
    conv.item_deleted("item_u1")
    conv.item_deleted("item_a1")
    add(conv, system_item("sum_2", "Summary 2"), "root", is_summary=True)
    conv.fold(summary_event("sum_2", ("sum_1",)))
    conv.item_deleted("sum_1")
    assert conv.invariant_violations() == []
    conv.item_deleted("sum_2")
    problems = conv.invariant_violations()
    assert sorted(p.split()[2] for p in problems) == ["item_a1", "item_u1"]


def test_folding_into_a_summary_that_is_not_in_the_context_is_a_violation() -> None:
    conv = four_turns()
    conv.fold(summary_event("sum_missing", ("item_u1",)))
    conv.item_deleted("item_u1")
    assert len(conv.invariant_violations()) == 1


def test_folded_turns_still_in_context_are_fine_before_deletion() -> None:
    conv = four_turns()
    add(conv, system_item("sum_1", "Summary"), "root", is_summary=True)
    conv.fold(summary_event("sum_1", ("item_u1", "item_a1")))
    assert conv.invariant_violations() == []
    assert conv.context == ["sum_1", "item_u1", "item_a1", "item_u2", "item_a2"]


# ----- usage -------------------------------------------------------------------------------------


def test_response_usage_accumulates_and_tracks_the_last_context_size() -> None:
    conv = ConversationState()
    assert conv.context_tokens == 0
    first = usage(1000, 200, input_text=300, input_audio=700, cached=100, output_text=50, output_audio=150)
    second = usage(1500, 300, input_text=400, input_audio=1100, cached=900, output_text=60, output_audio=240)
    conv.response_usage(first, 1_000)
    assert conv.context_tokens == 1200
    conv.response_usage(second, 2_500)
    assert conv.usage == UsageTotals(
        responses=2,
        input_tokens=2500,
        output_tokens=500,
        input_text_tokens=700,
        input_audio_tokens=1800,
        cached_tokens=1000,
        output_text_tokens=110,
        output_audio_tokens=390,
        last_context_tokens=1800,
    )
    assert conv.usage.total_tokens == 3000
    assert conv.context_tokens == 1800
    assert conv.last_usage == second
    assert [u.at_ms for u in conv.response_usages] == [1_000, 2_500]


def test_response_usage_tolerates_missing_details() -> None:
    conv = ConversationState()
    conv.response_usage({"total_tokens": 42, "input_tokens": 40, "output_tokens": 2}, 1_000)
    conv.response_usage({"input_token_details": None, "output_token_details": None}, 2_000)
    assert conv.usage.responses == 2
    assert conv.usage.input_tokens == 40
    assert conv.usage.input_audio_tokens == 0
    assert conv.context_tokens == 0  # the last response reported no total


def test_no_core_function_defaults_a_time() -> None:
    """Issue #13, "no time defaults": no method of the core makes up a time (`now_ms`/`at_ms` = 0).

    `None` defaults ("no time known", as in `PlaybackTracker.mark_echoed`) and dataclass fields
    are not made-up times and are left alone."""
    import importlib
    import inspect
    import pkgutil

    import callbot.core

    defaulted = []
    for info in pkgutil.walk_packages(callbot.core.__path__, "callbot.core."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if not inspect.isclass(obj) or obj.__module__ != module.__name__:
                continue
            for meth_name, meth in vars(obj).items():
                if not inspect.isfunction(meth) or meth_name == "__init__":
                    continue
                for param in inspect.signature(meth).parameters.values():
                    if param.name in {"now_ms", "at_ms"} and isinstance(param.default, int):
                        defaulted.append(f"{info.name}.{name}.{meth_name}({param.name})")
    assert defaulted == []
