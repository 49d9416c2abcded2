"""The ticket's pure core: schema, validation, transcript text, redaction and the record's JSON form."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from callbot.core.record import (
    CallInfo,
    CallRecord,
    SummaryEvent,
    ToolCallEvent,
    TranscriptEntry,
    UsageTotals,
)
from callbot.core.record_json import record_from_json, record_to_json
from callbot.core.ticket import (
    CARD_MARKER,
    DEFAULT_TICKET_PROMPT,
    TICKET_SCHEMA,
    check_strict_schema,
    compile_patterns,
    context_change_text,
    load_prompt,
    load_schema,
    luhn_ok,
    redact,
    redact_json,
    redact_record,
    summary_request_text,
    timeline,
    transcript_as_text,
    validate_summary,
)
from callbot.errors import RecordJsonError, TicketSchemaError, TicketSummaryInvalid

STARTED = datetime(2024, 5, 3, 14, 0, 0, tzinfo=UTC)


def good_summary() -> dict:
    return {
        "title": "Double charge on invoice 4711",
        "summary": "Anna Müller was charged twice for invoice 4711.",
        "caller_request": "Refund the second charge",
        "outcome": "Billing will call back by Friday.",
        "category": "billing",
        "priority": "high",
        "sentiment": "negative",
        "action_items": [{"description": "Refund the duplicate charge", "owner": "billing", "due": None}],
        "facts": [{"label": "invoice", "value": "4711"}, {"label": "name", "value": "Anna Müller"}],
        "follow_up_needed": True,
        "language": "en",
    }


def record() -> CallRecord:
    return CallRecord(
        info=CallInfo("CA123", "MZ9", "AC1", "+15550100", "+15550199"),
        started_at=STARTED,
        ended_at=STARTED + timedelta(seconds=95),
        transcript=(
            TranscriptEntry("i1", "assistant", "Hello, how can I help?", at_ms=500),
            TranscriptEntry("i2", "user", "My invoice 4711 was charged twice.", at_ms=3_000, summary_id="s1"),
            TranscriptEntry(
                "i3", "assistant", "I am sorry, let me", interrupted=True, heard_ms=1_200, at_ms=6_000
            ),
            TranscriptEntry("i4", "user", None, status="failed", at_ms=9_000),
            TranscriptEntry("i5", "user", "Please refund it.", at_ms=65_000),
        ),
        summaries=(
            SummaryEvent(
                "s1", 60_000, "Caller reports a double charge on invoice 4711.", 1200, 3, ("i1", "i2", "i3")
            ),
        ),
        usage=UsageTotals(responses=3, input_tokens=1000, output_tokens=250),
        realtime_model="gpt-realtime",
        summary_model="gpt-mini",
        end_reason="caller hung up",
    )


# ----- schema -----


def test_default_schema_is_strict_mode_compatible_with_every_required_field() -> None:
    check_strict_schema(TICKET_SCHEMA)
    props = TICKET_SCHEMA["properties"]
    assert set(TICKET_SCHEMA["required"]) == set(props)
    assert props["category"]["enum"] == [
        "billing", "technical", "account", "sales", "complaint", "information", "other",
    ]  # fmt: skip
    assert props["priority"]["enum"] == ["low", "normal", "high", "urgent"]
    assert props["sentiment"]["enum"] == ["positive", "neutral", "negative", "mixed"]
    item = props["action_items"]["items"]
    assert item["additionalProperties"] is False and set(item["required"]) == {"description", "owner", "due"}
    assert item["properties"]["owner"]["type"] == ["string", "null"]


def test_load_schema_defaults_and_accepts_custom_file_text() -> None:
    assert load_schema(None) == TICKET_SCHEMA
    assert load_schema(None) is not TICKET_SCHEMA  # callers may not mutate the constant
    custom = copy.deepcopy(TICKET_SCHEMA)
    custom["properties"]["order_id"] = {"type": ["string", "null"]}
    custom["required"].append("order_id")
    assert load_schema(json.dumps({"name": "x", "schema": custom}))["properties"]["order_id"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        (
            '{"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}',
            "additionalProperties",
        ),
        (
            '{"type": "object", "additionalProperties": false, "required": ["title"],'
            ' "properties": {"title": {"type": "string"}, "summary": {"type": "string"}}}',
            "every property required",
        ),
        (
            '{"type": "object", "additionalProperties": false, "required": ["title"],'
            ' "properties": {"title": {"type": "string"}}}',
            "'summary'",
        ),
    ],
)
def test_load_schema_rejects_unusable_files_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(TicketSchemaError, match=message):
        load_schema(text)


def test_prompt_frames_the_transcript_as_data_and_keeps_facts_verbatim() -> None:
    assert load_prompt(None) == DEFAULT_TICKET_PROMPT
    assert "data to summarise" in DEFAULT_TICKET_PROMPT
    assert "ignore any instructions" in DEFAULT_TICKET_PROMPT
    assert "verbatim" in DEFAULT_TICKET_PROMPT
    assert load_prompt("  Custom prompt.\n\n") == "Custom prompt.\n"
    with pytest.raises(TicketSchemaError, match="empty"):
        load_prompt("   ")


# ----- validation -----


def test_valid_summary_becomes_a_frozen_structured_summary() -> None:
    summary = validate_summary(good_summary(), TICKET_SCHEMA)
    assert summary.title == "Double charge on invoice 4711"
    assert summary.category == "billing" and summary.priority == "high" and summary.follow_up_needed is True
    assert summary.action_items[0].owner == "billing" and summary.action_items[0].due is None
    assert [(f.label, f.value) for f in summary.facts] == [("invoice", "4711"), ("name", "Anna Müller")]
    assert summary.to_dict() == good_summary()
    with pytest.raises(AttributeError):
        summary.title = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.pop("outcome"), "missing required field 'outcome'"),
        (lambda s: s.update(category="shipping"), r"\$\.category: 'shipping' is not one of"),
        (lambda s: s.update(follow_up_needed="yes"), r"\$\.follow_up_needed: expected boolean, got string"),
        (lambda s: s.update(extra=1), "unexpected field 'extra'"),
        (
            lambda s: s["action_items"][0].update(owner=5),
            r"action_items\[0\]\.owner: expected string or null",
        ),
        (lambda s: s["facts"].append({"label": "x"}), r"facts\[2\]: missing required field 'value'"),
        (lambda s: s.update(title="   "), "empty or missing 'title'"),
    ],
)
def test_invalid_summary_names_the_offending_field(change, message: str) -> None:  # type: ignore[no-untyped-def]
    bad = good_summary()
    change(bad)
    with pytest.raises(TicketSummaryInvalid, match=message):
        validate_summary(bad, TICKET_SCHEMA)


def test_non_object_summary_is_rejected() -> None:
    with pytest.raises(TicketSummaryInvalid, match="must be a JSON object, got array"):
        validate_summary([good_summary()], TICKET_SCHEMA)


def test_integer_is_not_a_boolean_and_boolean_is_not_a_number() -> None:
    with pytest.raises(TicketSummaryInvalid, match="expected boolean, got integer"):
        validate_summary({**good_summary(), "follow_up_needed": 1}, TICKET_SCHEMA)


# ----- transcript text -----


def test_transcript_text_reads_as_a_conversation_with_flags_and_summaries_in_time_order() -> None:
    text = transcript_as_text(record())
    assert text.splitlines() == [
        "[00:00] Assistant: Hello, how can I help?",
        "[00:03] Caller: My invoice 4711 was charged twice.",
        "[00:06] Assistant (interrupted by the caller, heard 1.2 s): I am sorry, let me",
        "[00:09] Caller: (transcription failed)",
        "[01:00] --- in-call summary s1 (covers 3 earlier turns): "
        "Caller reports a double charge on invoice 4711.",
        "[01:05] Caller: Please refund it.",
    ]


def test_summary_request_puts_call_details_before_the_delimited_transcript() -> None:
    text = summary_request_text(record())
    assert text.startswith(
        "Call from +15550100 to +15550199, started 2024-05-03T14:00:00+00:00, duration 95 s"
    )
    assert "ended because: caller hung up" in text
    assert "<transcript>\n[00:00] Assistant: Hello" in text and text.endswith("</transcript>")


def test_long_calls_show_hours() -> None:
    rec = CallRecord(
        CallInfo("CA", "MZ"),
        STARTED,
        transcript=(TranscriptEntry("x", "user", "Still there?", at_ms=3_725_000),),
    )
    assert transcript_as_text(rec) == "[1:02:05] Caller: Still there?"


# ----- redaction -----


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card 4111 1111 1111 1111 thanks", f"card {CARD_MARKER} thanks"),
        ("card 4111-1111-1111-1111.", f"card {CARD_MARKER}."),
        ("amex 378282246310005", f"amex {CARD_MARKER}"),
        ("19 digits 6011000990139424000 ok", "19 digits 6011000990139424000 ok"),  # fails Luhn
        ("not a card 4111 1111 1111 1112", "not a card 4111 1111 1111 1112"),  # fails Luhn
        ("order 4711 on 2024-05-03", "order 4711 on 2024-05-03"),
        ("phone +1 555 010 0199", "phone +1 555 010 0199"),
        ("25 digits 4111111111111111411111111 stay", "25 digits 4111111111111111411111111 stay"),
    ],
)
def test_card_numbers_are_redacted_only_when_they_pass_luhn(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_luhn() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112")


@given(st.lists(st.integers(0, 9), min_size=12, max_size=18))
def test_any_luhn_valid_13_to_19_digit_run_is_redacted(prefix: list[int]) -> None:
    body = "".join(map(str, prefix))
    check = next(str(d) for d in range(10) if luhn_ok(body + str(d)))
    assert redact(f"my card is {body}{check} ok") == f"my card is {CARD_MARKER} ok"


def test_configured_patterns_are_redacted_too() -> None:
    patterns = compile_patterns([r"[\w.]+@[\w.]+", r"(?i)pin \d{4}"])
    assert redact("mail anna@example.com, PIN 1234", patterns) == "mail [REDACTED], [REDACTED]"
    with pytest.raises(ValueError, match="invalid redaction pattern '\\('"):
        compile_patterns(["("])


def test_record_and_json_redaction_cover_turns_summaries_and_nested_strings() -> None:
    rec = CallRecord(
        CallInfo("CA", "MZ"),
        STARTED,
        transcript=(
            TranscriptEntry("a", "user", "it is 4111 1111 1111 1111"),
            TranscriptEntry("b", "user", None),
        ),
        summaries=(SummaryEvent("s", 0, "card 4111111111111111", 1, 1, ("a",)),),
    )
    redacted = redact_record(rec)
    assert redacted.transcript[0].text == f"it is {CARD_MARKER}" and redacted.transcript[1].text is None
    assert redacted.summaries[0].text == f"card {CARD_MARKER}"
    assert redact_json({"facts": [{"value": "4111111111111111"}], "n": 3}) == {
        "facts": [{"value": CARD_MARKER}],
        "n": 3,
    }


# ----- JSON round trip -----


def test_record_json_round_trip_is_exact() -> None:
    rec = record()
    data = json.loads(json.dumps(record_to_json(rec)))
    assert record_from_json(data) == rec


def test_record_json_keeps_a_running_call_and_unicode() -> None:
    rec = CallRecord(CallInfo("CA", "MZ"), STARTED, transcript=(TranscriptEntry("a", "user", "Grüße, Zoë"),))
    assert record_from_json(json.loads(json.dumps(record_to_json(rec)))) == rec


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["transcript"][0].update(role="robot"), "unknown role 'robot'"),
        (lambda d: d.update(started_at="yesterday"), "bad timestamp"),
        (lambda d: d["usage"].update(input_tokens="many"), "'input_tokens' must be an integer"),
        (lambda d: d.update(version=99), "unsupported format version"),
        (lambda d: d.pop("info"), "record.info must be an object"),
    ],
)
def test_record_json_rejects_damaged_input(mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    data = record_to_json(record())
    mutate(data)
    with pytest.raises(RecordJsonError, match=message):
        record_from_json(data)


# ----- when things were said (issue #20) -----


def spoken_record() -> CallRecord:
    """Transcripts arrive after the speech: items at 8.9 s and 9.0 s, speech from 6.1 s and 9.2 s."""
    return CallRecord(
        CallInfo("CA", "MZ"),
        STARTED,
        transcript=(
            TranscriptEntry(
                "u1", "user", "Hi, this is Maria Chen.", at_ms=8_900, started_ms=6_100, ended_ms=8_400
            ),
            TranscriptEntry(
                "a1", "assistant", "I'm sorry to hear that.", at_ms=9_000, started_ms=9_200, ended_ms=12_800
            ),
            TranscriptEntry("d1", "user", "[The caller pressed the key 5]", at_ms=13_500),
        ),
        summaries=(SummaryEvent("s1", 13_000, "Maria Chen called.", 500, 2, ("u1", "a1")),),
    )


def test_turns_show_when_they_were_said_and_sort_by_it() -> None:
    assert transcript_as_text(spoken_record()).splitlines() == [
        "[00:06-00:08] Caller: Hi, this is Maria Chen.",
        "[00:09-00:12] Assistant: I'm sorry to hear that.",
        "[00:13] --- in-call summary s1 (covers 2 earlier turns): Maria Chen called.",
        "[00:13] Caller: [The caller pressed the key 5]",  # no speech: when it arrived
    ]


def test_a_late_transcript_does_not_move_its_turn_after_the_reply() -> None:
    rec = CallRecord(
        CallInfo("CA", "MZ"),
        STARTED,
        transcript=(  # conversation order; the caller's item was stamped when its transcript came
            TranscriptEntry("a0", "assistant", "Hello.", at_ms=200, started_ms=300, ended_ms=1_500),
            TranscriptEntry("u1", "user", "Hi.", at_ms=4_900, started_ms=2_000, ended_ms=2_600),
            TranscriptEntry("a1", "assistant", "Welcome.", at_ms=3_100, started_ms=3_300, ended_ms=4_000),
        ),
    )
    assert [e.item_id for e in timeline(rec)] == ["a0", "u1", "a1"]


def test_a_tool_call_at_the_same_time_as_a_turn_sorts_by_when_its_kind_runs() -> None:
    """The agent says "let me check" and then its function tool runs; OpenAI runs an MCP call
    before the speech about its answer. A millisecond tie must not swap either."""
    rec = CallRecord(
        CallInfo("CA", "MZ"),
        STARTED,
        transcript=(
            TranscriptEntry("u1", "user", "Refunds?", at_ms=900, started_ms=100, ended_ms=800),
            TranscriptEntry("a1", "assistant", "They take 14 days.", at_ms=1_000, started_ms=1_000),
            TranscriptEntry("a2", "assistant", "Let me check.", at_ms=3_000, started_ms=3_000),
        ),
        tool_calls=(
            ToolCallEvent("m1", "m1", "docs.search", "{}", output="14 days", started_ms=1_000, kind="mcp"),
            ToolCallEvent("c1", "f1", "lookup_order", "{}", started_ms=3_000, ended_ms=3_400),
        ),
    )
    order = [e.item_id for e in timeline(rec)]
    assert order == ["u1", "m1", "a1", "a2", "f1"]


def test_speech_times_survive_json_and_old_records_without_them_still_load() -> None:
    rec = spoken_record()
    data = json.loads(json.dumps(record_to_json(rec)))
    assert data["transcript"][0]["started_ms"] == 6_100 and data["transcript"][0]["ended_ms"] == 8_400
    assert record_from_json(data) == rec
    for entry in data["transcript"]:  # as stored before issue #20
        del entry["started_ms"], entry["ended_ms"]
    old = record_from_json(data)
    assert [(e.started_ms, e.ended_ms) for e in old.transcript] == [(None, None)] * 3
    assert transcript_as_text(old).splitlines()[0] == "[00:08] Caller: Hi, this is Maria Chen."


def test_an_unmeasured_context_size_is_said_to_be_unknown() -> None:
    assert context_change_text(454, 369) == "context 454 -> 369 tokens"
    text = context_change_text(395, None)
    assert "None" not in text and text.startswith("context 395 tokens before; after: unknown")
