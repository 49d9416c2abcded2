"""Cost per call: tokens by kind, the estimate at the price table's rates, and the saving of the
summaries, checked against the hand computation of docs/cost.md §5."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from callbot.core.conversation import ConversationState
from callbot.core.cost import (
    DEFAULT_PRICE_TABLE,
    TokensByKind,
    call_cost,
    folded_extra,
    price_table,
    prices_for,
    response_tokens,
    turn_tokens,
)
from callbot.core.record import (
    CallInfo,
    CallRecord,
    ResponseUsage,
    SummaryEvent,
    TranscriptEntry,
    UsageTotals,
)

TABLE = price_table(DEFAULT_PRICE_TABLE)
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)

CALLER = TranscriptEntry("u1", "user", "I need to move my appointment.", started_ms=1000, ended_ms=4000)
ASSISTANT = TranscriptEntry(
    "a1", "assistant", "Your appointment is on Monday.", at_ms=4200, started_ms=4500, ended_ms=6500
)
SUMMARY = SummaryEvent("s1", 8000, "Caller wants to move a Monday booking.", 900, 2, ("u1", "a1"), 500)
USAGE = ResponseUsage(
    at_ms=9000,
    input_tokens=4000,
    cached_tokens=2000,
    input_text_tokens=1000,
    input_audio_tokens=3000,
    output_text_tokens=50,
    output_audio_tokens=400,
    cached_text_tokens=1000,
    cached_audio_tokens=1000,
)


def record(*usages: ResponseUsage, summaries: tuple[SummaryEvent, ...] = (SUMMARY,)) -> CallRecord:
    return CallRecord(
        info=CallInfo("CA1", "MZ1"),
        started_at=T0,
        transcript=(CALLER, ASSISTANT),
        summaries=summaries,
        realtime_model="gpt-realtime-1.5",
        response_usage=usages,
    )


def test_the_worked_example_matches_the_hand_computation() -> None:
    cost = call_cost(record(USAGE), TABLE)
    assert cost.tokens == TokensByKind(
        text_input=0, text_cached=1000, text_output=50, audio_input=2000, audio_cached=1000, audio_output=400
    )
    # 0*4 + 2000*32 + 2000*0.40 + 50*16 + 400*64 = 91,200 micro-dollars
    assert cost.cost_usd == pytest.approx(0.0912)
    # folded: caller 3 s = 30 audio tokens; assistant 2 s = 40 audio + ceil(30/4) = 8 text;
    # the summary's 38 characters are ceil(38/4) = 10 text tokens: +70 audio, -2 text
    assert (cost.saved_audio_tokens, cost.saved_text_tokens) == (70, -2)
    assert cost.tokens_saved == 68
    assert cost.cost_without_summaries_usd == pytest.approx(0.0912 + (70 * 32 - 2 * 4) / 1e6)
    assert cost.saved_usd == pytest.approx(0.002232)
    data = cost.to_json()
    assert data["estimated_usd"] == 0.0912
    assert data["without_summaries_usd"] == 0.093432
    assert data["tokens"]["total"] == 4450


def test_a_response_before_the_summary_saved_nothing() -> None:
    early = ResponseUsage(at_ms=7000, input_tokens=900, input_text_tokens=100, input_audio_tokens=800)
    cost = call_cost(record(early, USAGE), TABLE)
    assert cost.tokens_saved == 68  # only the response after the summary
    assert cost.responses == 2
    # 100 text in at $4 and 800 audio in at $32 on top of the worked example
    assert cost.cost_usd == pytest.approx(0.0912 + (100 * 4 + 800 * 32) / 1e6)


def test_a_rolled_up_summary_counts_each_turn_once_and_subtracts_only_the_live_summary() -> None:
    rollup = SummaryEvent("s2", 8500, "x" * 20, 600, 1, ("s1", "u1"), 300)
    text, audio = folded_extra((CALLER, ASSISTANT), (SUMMARY, rollup), at_ms=9000)
    # u1 and a1 once (70 audio, 8 text), minus only s2's 5 text tokens (s1 is inside s2)
    assert (text, audio) == (8 - 5, 70)
    assert folded_extra((CALLER, ASSISTANT), (SUMMARY, rollup), at_ms=8200) == (8 - 10, 70)


def test_turn_estimates_follow_the_audio_token_rates() -> None:
    assert turn_tokens(CALLER) == (0, 30)  # the caller's transcript is not in the model's context
    assert turn_tokens(ASSISTANT) == (8, 40)
    cut = TranscriptEntry(
        "a2", "assistant", "Your…", interrupted=True, heard_ms=1200, started_ms=0, ended_ms=5000
    )
    assert turn_tokens(cut) == (2, 24)  # only what played counts
    digits = TranscriptEntry("d1", "user", "[keypad] 1234#")
    assert turn_tokens(digits) == (4, 0)


def test_cached_tokens_without_a_modality_split_are_shared_in_proportion() -> None:
    usage = ResponseUsage(
        at_ms=0, input_tokens=4000, cached_tokens=2000, input_text_tokens=1000, input_audio_tokens=3000
    )
    tokens = response_tokens(usage)
    assert (tokens.text_cached, tokens.audio_cached) == (500, 1500)
    assert (tokens.text_input, tokens.audio_input) == (500, 1500)


def test_old_tickets_without_per_response_usage_are_priced_from_the_totals() -> None:
    old = CallRecord(
        info=CallInfo("CA2", "MZ2"),
        started_at=T0,
        realtime_model="gpt-realtime-2",
        usage=UsageTotals(
            responses=3, input_tokens=1000, input_text_tokens=1000, output_text_tokens=100, output_tokens=100
        ),
    )
    cost = call_cost(old, TABLE)
    assert cost.responses == 3
    assert cost.cost_usd == pytest.approx((1000 * 4 + 100 * 24) / 1e6)
    assert cost.tokens_saved == 0


def test_unknown_models_get_tokens_and_no_dollars_dated_models_take_their_family() -> None:
    assert prices_for("gpt-realtime-1.5-2026-03-01", TABLE) == TABLE["gpt-realtime-1.5"]
    assert prices_for("someone-else", TABLE) is None
    unpriced = CallRecord(
        info=CallInfo("CA3", "MZ3"), started_at=T0, realtime_model="x", response_usage=(USAGE,)
    )
    cost = call_cost(unpriced, TABLE)
    assert cost.cost_usd is None and cost.saved_usd is None
    assert cost.to_json()["estimated_usd"] is None
    assert cost.tokens.total == 4450


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"m": {"text_in": 1}}, "missing"),
        ({"m": {**DEFAULT_PRICE_TABLE["gpt-realtime-2"], "video_in": 1}}, "unknown video_in"),
        ({"m": {**DEFAULT_PRICE_TABLE["gpt-realtime-2"], "text_in": -1}}, "must be a number >= 0"),
        ({"m": 5}, "must be an object"),
    ],
)
def test_a_bad_price_table_is_refused_with_a_reason(raw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        price_table(raw)


def test_the_conversation_keeps_each_response_usage_with_its_time() -> None:
    conv = ConversationState()
    conv.response_usage(
        {
            "input_tokens": 4000,
            "output_tokens": 450,
            "total_tokens": 4450,
            "input_token_details": {
                "text_tokens": 1000,
                "audio_tokens": 3000,
                "cached_tokens": 2000,
                "cached_tokens_details": {"text_tokens": 1000, "audio_tokens": 1000},
            },
            "output_token_details": {"text_tokens": 50, "audio_tokens": 400},
        },
        9000,
    )
    conv.response_usage({"input_tokens": "lots", "input_token_details": None}, 9500)
    assert conv.response_usages == [USAGE, ResponseUsage(at_ms=9500)]
    assert conv.usage.responses == 2


def test_edge_cases_of_the_token_split() -> None:
    # input tokens with no modality split at all count as text
    assert response_tokens(ResponseUsage(0, input_tokens=100)) == TokensByKind(text_input=100)
    # a nonsensical cached split (more than the input) falls back to the proportional share
    odd = ResponseUsage(0, 100, 100, 50, 50, cached_text_tokens=90, cached_audio_tokens=90)
    assert response_tokens(odd) == TokensByKind(text_cached=50, audio_cached=50)
    # a system turn spoken (a timed item) counts as text only
    system = TranscriptEntry("x", "system", "abcdefgh", started_ms=0, ended_ms=1000)
    assert turn_tokens(system) == (2, 0)


def test_response_usage_json_round_trips_and_bad_input_is_refused() -> None:
    from callbot.core.record_json import record_from_json, record_to_json, response_usages_from_json
    from callbot.errors import RecordJsonError

    rec = record(USAGE)
    assert record_from_json(record_to_json(rec)) == rec
    old = record_to_json(rec)
    del old["response_usage"]  # a spooled record from before issue #18
    assert record_from_json(old).response_usage == ()
    with pytest.raises(RecordJsonError, match="must be a list"):
        response_usages_from_json({"at_ms": 1})
    with pytest.raises(RecordJsonError, match="must be an integer"):
        response_usages_from_json([{"at_ms": "soon"}])
    with pytest.raises(RecordJsonError, match="must be an object"):
        response_usages_from_json([3])


def test_details_that_are_not_objects_count_as_nothing() -> None:
    conv = ConversationState()
    conv.response_usage({"input_tokens": 10, "input_token_details": [1], "output_token_details": "x"}, 5)
    conv.response_usage({"input_tokens": 7, "input_token_details": {"cached_tokens_details": 4}}, 6)
    assert conv.response_usages == [ResponseUsage(5, 10), ResponseUsage(6, 7)]
