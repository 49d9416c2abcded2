"""The call's life, pure: placing checks, the outbound agent, AMD policy, callbacks and outcomes."""

from __future__ import annotations

import itertools

import pytest

from callbot.core.call import CallConfig, CallSession
from callbot.core.call_control import CallState
from callbot.core.call_lifecycle import (
    NO_MEDIA_STREAM,
    STATUS_OVERDUE_S,
    STREAMLESS_SLACK_S,
    Lifecycle,
    StatusUpdate,
    amd_action,
    arrival_info,
    call_outcome,
    call_request,
    check_e164,
    fetched_status,
    machine_detection,
    merge_status,
    outbound_agent,
    parse_amd_callback,
    parse_status_callback,
    status_overdue_s,
    streamless_after_s,
)
from callbot.core.campaign import CampaignState, RowState, outcome_counts, parse_campaign_csv
from callbot.core.realtime import AgentConfig
from callbot.core.twilio import Start
from callbot.errors import InvalidCallRequest

SID = "CA" + "a" * 32


# ----- placing -----


@pytest.mark.parametrize("number", ["+15551234567", " +442071838750 ", "+4930123456"])
def test_e164_numbers_pass_stripped(number: str) -> None:
    assert check_e164(number) == number.strip()


@pytest.mark.parametrize(
    "number", ["15551234567", "+05551234567", "+1 555 123 4567", "+1555", "+1234567890123456", ""]
)
def test_anything_else_is_refused_with_an_example(number: str) -> None:
    with pytest.raises(InvalidCallRequest, match=r"E\.164.*\+15551234567"):
        check_e164(number)


def test_a_call_request_takes_context_as_an_object_or_its_json_text() -> None:
    as_text = call_request("+15551234567", context='{"order": "4417"}', instructions="  Say hi. ")
    as_object = call_request("+15551234567", context={"order": "4417"}, instructions="Say hi.")
    assert as_text == as_object
    assert as_text.instructions == "Say hi." and as_text.from_ is None
    assert call_request("+15551234567", context="").context is None


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"to": 15551234567}, "'to' must be"),
        ({"to": "+15551234567", "from_": "0800"}, "'from'"),
        ({"to": "+15551234567", "context": "[1]"}, "JSON object"),
        ({"to": "+15551234567", "context": "{bad"}, "not valid JSON"),
        ({"to": "+15551234567", "context": {"x": "y" * 5000}}, "larger than"),
        ({"to": "+15551234567", "instructions": "x" * 4001}, "longer than"),
        ({"to": "+15551234567", "instructions": 7}, "must be text"),
    ],
)
def test_bad_call_requests_name_the_field(fields: dict[str, object], message: str) -> None:
    to = fields.pop("to")
    with pytest.raises(InvalidCallRequest, match=message):
        call_request(to, **fields)  # type: ignore[arg-type]


def test_the_outbound_agent_knows_why_it_calls_and_opens_with_it() -> None:
    base = AgentConfig(instructions="You are Acme's assistant.", greeting="Greet the caller.")
    agent = outbound_agent(base, "Confirm Friday's delivery.", {"order": "4417"})
    assert agent.instructions.startswith("You are Acme's assistant.")
    assert "outbound call" in agent.instructions
    assert "Confirm Friday's delivery." in agent.instructions
    assert '{"order": "4417"}' in agent.instructions
    assert "why you are calling" in agent.greeting and "Confirm Friday's delivery." in agent.greeting
    assert (agent.voice, agent.model) == (base.voice, base.model)
    bare = outbound_agent(base, "", None)
    assert "Facts about this call" not in bare.instructions


def test_the_session_takes_the_calls_own_agent_and_direction_only_before_its_start() -> None:
    session = CallSession(CallConfig())
    agent = AgentConfig(instructions="Outbound.")
    session.set_up_call(agent, "outbound")
    session.receive_twilio(Start(stream_sid="MZ1", call_sid=SID, account_sid="AC1"), 0)
    assert session.config.agent.instructions == "Outbound."
    assert session.info is not None and session.info.direction == "outbound"
    session.set_up_call(AgentConfig(instructions="late"), "inbound")
    assert session.config.agent.instructions == "Outbound."
    assert CallSession(CallConfig()).direction == "inbound"


# ----- answering machines -----


def test_detection_waits_for_the_message_end_only_when_a_voicemail_is_to_be_left() -> None:
    assert machine_detection("voicemail", "Please call us back.") == "DetectMessageEnd"
    assert machine_detection("voicemail", "") == "Enable"
    assert machine_detection("hangup", "Please call us back.") == "Enable"


@pytest.mark.parametrize(
    ("answered_by", "policy", "message", "action"),
    [
        ("human", "voicemail", "msg", "talk"),
        ("unknown", "hangup", "msg", "talk"),
        ("machine_end_beep", "voicemail", "msg", "voicemail"),
        ("machine_end_silence", "voicemail", "msg", "voicemail"),
        ("machine_end_other", "voicemail", "msg", "voicemail"),
        ("machine_end_beep", "voicemail", "", "hangup"),
        ("machine_end_beep", "hangup", "msg", "hangup"),
        ("machine_start", "voicemail", "msg", "wait"),
        ("machine_start", "hangup", "msg", "hangup"),
        ("fax", "voicemail", "msg", "hangup"),
    ],
)
def test_amd_policy(answered_by: str, policy: str, message: str, action: str) -> None:
    assert amd_action(answered_by, policy, message) == action  # type: ignore[arg-type]


# ----- status callbacks -----


def test_a_callback_parses_with_its_numbers() -> None:
    update = parse_status_callback(
        {
            "CallSid": SID,
            "CallStatus": "completed",
            "SequenceNumber": "3",
            "CallDuration": "42",
            "AnsweredBy": "human",
            "Direction": "outbound-api",
            "From": "+15550001111",
            "To": "+15557770001",
        }
    )
    assert update == StatusUpdate(
        SID, "completed", 3, 42, "human", "+15550001111", "+15557770001", "outbound"
    )
    assert update.final
    with pytest.raises(InvalidCallRequest):
        parse_status_callback({"CallSid": SID, "CallStatus": "exploded"})
    with pytest.raises(InvalidCallRequest, match="CallDuration"):
        parse_status_callback({"CallSid": SID, "CallStatus": "completed", "CallDuration": "4x"})


@pytest.mark.parametrize(
    ("fields", "bad"),
    [
        ({"CallSid": "CA" + "1" * 70}, "CallSid"),
        ({"CallSid": "CA12;DROP"}, "CallSid"),
        ({"CallSid": ""}, "CallSid"),
        ({"SequenceNumber": "9" * 30}, "SequenceNumber"),
        ({"CallDuration": "\uff11"}, "CallDuration"),
        ({"From": "+1555\x00"}, "From"),  # PostgreSQL keeps no NUL (a 202 "database down" before)
        ({"To": "a\x00b"}, "To"),
    ],
)
def test_a_callback_with_a_field_no_ticket_could_hold_is_refused(fields: dict[str, str], bad: str) -> None:
    with pytest.raises(InvalidCallRequest, match=bad):
        parse_status_callback({"CallSid": SID, "CallStatus": "completed", **fields})


@pytest.mark.parametrize("call_sid", ["", "CA" + "1" * 70, "CA/../x", "CA?x=1", "CA\x00", "Z" * 65])
def test_an_amd_callback_without_a_twilio_call_sid_is_refused(call_sid: str) -> None:
    """The sid goes into a REST URL and a ticket query: it was taken as it came (fuzzer)."""
    with pytest.raises(InvalidCallRequest, match="CallSid"):
        parse_amd_callback({"CallSid": call_sid, "AnsweredBy": "machine_end_beep"})


def test_an_amd_callback_keeps_only_twilios_answered_by_values() -> None:
    assert parse_amd_callback({"CallSid": SID, "AnsweredBy": "machine_end_beep"}) == (SID, "machine_end_beep")
    assert parse_amd_callback({"CallSid": SID, "AnsweredBy": "robot\x00"}) == (SID, "")
    assert parse_amd_callback({"CallSid": SID}) == (SID, "")


def _nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"instructions": "Say hi\x00"}, "'instructions' holds the character U\\+0000"),
        ({"instructions": "\ud800 then"}, "'instructions' holds the character U\\+D800"),
        ({"context": {"order": "44\x0017"}}, "'context' holds the character U\\+0000"),
        ({"context": {"\udfff": 1}}, "'context' holds the character U\\+DFFF"),
        ({"context": {"items": ["ok", 7, {"k": "a\x00"}]}}, "'context' holds the character U\\+0000"),
        ({"context": _nested(5000)}, "'context' is not JSON callbot can store"),
        ({"context": '{"k": "\\u0000"}'}, "'context' holds the character U\\+0000"),
        ({"context": '{"n": ' + "9" * 5000 + "}"}, "'context' is not JSON callbot can read"),
        ({"context": "[" * 100_000 + "]" * 100_000}, "'context' is larger than"),
        ({"context": '{"a":' * 1200 + "1" + "}" * 1200}, "'context' is not JSON callbot can read"),
    ],
)
def test_a_call_request_with_text_no_ticket_could_keep_is_refused(
    fields: dict[str, object], message: str
) -> None:
    """NUL and lone surrogates were a 503 (PostgreSQL refused the placement's row, after the call
    was placed: it was then canceled), too long a number or too deep a nesting a 500 (fuzzer)."""
    with pytest.raises(InvalidCallRequest, match=message):
        call_request("+15551234567", **fields)  # type: ignore[arg-type]


def test_a_callbacks_numbers_are_cut_to_what_a_ticket_keeps() -> None:
    update = parse_status_callback(
        {"CallSid": SID, "CallStatus": "ringing", "From": "+1" + "5" * 100, "To": "x" * 65}
    )
    assert (len(update.from_number), len(update.to_number)) == (64, 64)
    assert update.from_number.startswith("+1555")


# ----- an inbound call arriving, and calls whose end never reached callbot -----


def test_an_arriving_call_is_keyed_on_its_call_sid_and_keeps_its_numbers() -> None:
    info = arrival_info({"CallSid": SID, "AccountSid": "AC1", "From": "+15550001111", "To": "+15557770001"})
    assert info is not None
    assert (info.call_sid, info.stream_sid, info.account_sid) == (SID, "", "AC1")
    assert (info.from_number, info.to_number, info.direction) == ("+15550001111", "+15557770001", "inbound")
    long = arrival_info({"CallSid": SID, "From": "f" * 99, "To": "t" * 99, "AccountSid": "a" * 99})
    assert long is not None
    assert {len(long.from_number), len(long.to_number), len(long.account_sid)} == {64}


@pytest.mark.parametrize("call_sid", ["", "CA" + "0" * 63, "CA-1", "CA 1", "CAé"])
def test_an_arrival_without_a_twilio_call_sid_gets_no_ticket(call_sid: str) -> None:
    assert arrival_info({"CallSid": call_sid, "From": "+15550001111"}) is None
    assert arrival_info({}) is None


def test_a_streamless_ticket_waits_out_its_stream_token_and_the_slack() -> None:
    assert streamless_after_s(20) == 20 + STREAMLESS_SLACK_S
    assert streamless_after_s(0) == STREAMLESS_SLACK_S
    assert NO_MEDIA_STREAM == "no media stream"


def test_a_final_status_is_overdue_after_the_stream_or_after_ringing_and_the_token() -> None:
    after_stream, after_placed = status_overdue_s(ring_timeout_s=30, stream_token_ttl_s=300)
    assert after_stream == STATUS_OVERDUE_S
    assert after_placed == 30 + 300 + STATUS_OVERDUE_S


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (CallState("completed", 42), StatusUpdate(SID, "completed", duration_s=42)),
        (CallState("no-answer"), StatusUpdate(SID, "no-answer")),
        (CallState("in-progress", None), None),
        (CallState("ringing"), None),
    ],
)
def test_a_fetched_call_stands_in_for_its_final_callback_only_once_over(
    state: CallState, expected: StatusUpdate | None
) -> None:
    update = fetched_status(SID, state)
    assert update == expected
    if update is not None:
        merged = merge_status(Lifecycle(twilio_status="in-progress", sequence=2), update)
        assert merged.final and merged.duration_s == state.duration_s


CALLBACKS = [
    StatusUpdate(SID, "initiated", 0),
    StatusUpdate(SID, "ringing", 1),
    StatusUpdate(SID, "in-progress", 2),
    StatusUpdate(SID, "completed", 3, duration_s=42),
]


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_callbacks_in_any_order_and_repeated_end_in_the_same_state(order: tuple[int, ...]) -> None:
    life = Lifecycle()
    for index in (*order, *order):  # every order, and each callback twice
        life = merge_status(life, CALLBACKS[index])
    assert (life.twilio_status, life.duration_s) == ("completed", 42)


def test_a_final_status_is_never_replaced_and_sequence_orders_the_rest() -> None:
    life = merge_status(Lifecycle(), StatusUpdate(SID, "ringing", 5))
    assert merge_status(life, StatusUpdate(SID, "initiated", 4)).twilio_status == "ringing"
    assert merge_status(life, StatusUpdate(SID, "in-progress", None)).twilio_status == "ringing"
    done = merge_status(life, StatusUpdate(SID, "busy", 6, duration_s=0))
    assert merge_status(done, StatusUpdate(SID, "completed", 7, duration_s=9)).twilio_status == "busy"
    late = merge_status(done, StatusUpdate(SID, "ringing", 8, answered_by="human"))
    assert late.twilio_status == "busy" and late.answered_by == "human"


def test_outcomes() -> None:
    done = Lifecycle(twilio_status="completed", duration_s=30)
    assert call_outcome(Lifecycle(twilio_status="ringing"), stream_started=False, stream_s=None) is None
    assert call_outcome(done, stream_started=True, stream_s=28.0) == "talked"
    assert call_outcome(done, stream_started=True, stream_s=None) == "talked"  # the stream still ends
    assert call_outcome(done, stream_started=True, stream_s=10.0) == "transferred"
    assert call_outcome(done, stream_started=False, stream_s=None) == "completed"
    busy = Lifecycle(twilio_status="busy", duration_s=0)
    assert call_outcome(busy, stream_started=False, stream_s=None) == "busy"
    machine = Lifecycle(twilio_status="completed", answered_by="machine_start")
    assert call_outcome(machine, stream_started=True, stream_s=3.0) == "machine"
    voicemail = Lifecycle(twilio_status="completed", answered_by="machine_end_beep", voicemail_left=True)
    assert call_outcome(voicemail, stream_started=True, stream_s=3.0) == "voicemail_left"


# ----- campaigns -----


def test_a_campaign_csv_reports_bad_rows_by_line_and_keeps_the_good_ones() -> None:
    text = (
        "Number,instructions,context\n"
        "+15551110001,Say hi,\n"
        "12345,Say hi,\n"
        "\n"
        '+15551110002,,"{""a"": 1}"\n'
        "+15551110001,again,\n"
        '+15551110003,,"[1]"\n'
        "+15551110004,x,,extra\n"
    )
    rows, bad = parse_campaign_csv(text, from_="+15550000000")
    assert [(r.line, r.request.to) for r in rows] == [(2, "+15551110001"), (5, "+15551110002")]
    assert rows[1].request.context == {"a": 1} and rows[0].request.from_ == "+15550000000"
    assert [b.line for b in bad] == [3, 6, 7, 8]
    assert "E.164" in bad[0].message and "already on line 2" in bad[1].message
    assert "JSON object" in bad[2].message and "more cells" in bad[3].message
    with pytest.raises(InvalidCallRequest, match="'number' column"):
        parse_campaign_csv("phone\n+15551110001\n")
    with pytest.raises(InvalidCallRequest, match="unknown CSV column"):
        parse_campaign_csv("number,colour\n+15551110001,red\n")


def test_campaign_state_resumes_from_its_lines_and_ignores_a_torn_last_one() -> None:
    rows, _ = parse_campaign_csv("number\n+15551110001\n+15551110002\n+15551110003\n+15551110004\n")
    state = CampaignState()
    lines = [
        state.record(RowState(rows[0].key, 2, "+15551110001", state="done", outcome="talked")),
        state.record(RowState(rows[1].key, 3, "+15551110002", state="placed", call_sid=SID, ticket_id=4)),
        state.record(RowState(rows[2].key, 4, "+15551110003", placing_at="2026-12-07T00:00:00+00:00")),
    ]
    resumed = CampaignState.from_lines([*lines, '{"key": "5:+1555111'])
    assert [r.request.to for r in resumed.to_place(rows)] == ["+15551110004"]
    assert [(r.key, r.ticket_id) for r in resumed.to_watch()] == [(rows[1].key, 4)]
    assert [r.placing_at for r in resumed.to_check()] == ["2026-12-07T00:00:00+00:00"]
    assert outcome_counts(resumed.rows.values()) == {"placed": 1, "placing": 1, "talked": 1}
