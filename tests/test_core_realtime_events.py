"""callbot.core.realtime_events: every server event the core acts on, parsed from SDK-valid events.

Each handled type is built with tests/core_helpers.py (validated against the installed SDK's
models) and parsed; then the ways a peer's event can be odd: unknown types, known but ignored
ones, and handled ones without a field the core needs, which must become `Invalid` with a reason,
never a made-up value. Parsing never raises, whatever the dict holds.
"""

from __future__ import annotations

import copy
from typing import Any

import core_helpers as h
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callbot.core import realtime_events as rte
from callbot.core import twilio as tw
from callbot.core.call import CallConfig, CallSession
from callbot.core.realtime import AgentConfig

# ----- every handled type ---------------------------------------------------------------------


def test_session_updated_carries_the_effective_formats() -> None:
    assert rte.parse(h.session_updated(h.PCMU)) == rte.SessionUpdated("audio/pcmu", "audio/pcmu")
    assert rte.parse(h.session_updated(h.PCMU, h.PCM24K)) == rte.SessionUpdated("audio/pcmu", "audio/pcm")


def test_session_updated_without_audio_has_no_formats() -> None:
    # the format check then fails the call at once instead of waiting for the ready timeout
    event = h.session_updated(h.PCMU)
    del event["session"]["audio"]
    assert rte.parse(event) == rte.SessionUpdated(None, None)
    assert rte.parse({"type": "session.updated"}) == rte.SessionUpdated(None, None)


def test_speech_started_and_stopped() -> None:
    assert rte.parse(h.speech_started("item_u1", 1234)) == rte.SpeechStarted("item_u1", 1234)
    assert rte.parse(h.speech_stopped("item_u1", 2345)) == rte.SpeechStopped("item_u1", 2345)


@pytest.mark.parametrize(
    "event_type", ["conversation.item.added", "conversation.item.created", "conversation.item.done"]
)
def test_item_events_carry_the_checked_id_the_item_and_its_place(event_type: str) -> None:
    item = h.user_audio_item("item_u1")
    event = (
        h.item_added(item, "item_a0")
        if event_type != "conversation.item.done"
        else h.item_done(item, "item_a0")
    )
    event["type"] = event_type  # `created` is the beta name of `added`, same shape
    cls = rte.ItemDone if event_type == "conversation.item.done" else rte.ItemAdded
    assert rte.parse(event) == cls("item_u1", item, "item_a0")


def test_an_item_at_the_start_has_no_previous_item() -> None:
    event = h.item_added(h.assistant_audio_item("item_a1"), None)
    assert rte.parse(event) == rte.ItemAdded("item_a1", event["item"], None)


def test_item_deleted() -> None:
    assert rte.parse(h.item_deleted("item_u1")) == rte.ItemDeleted("item_u1")


def test_caller_transcription_completed_and_failed() -> None:
    done = h.input_transcription_completed("item_u1", "My order is 88314.")
    assert rte.parse(done) == rte.TranscriptionCompleted("item_u1", "My order is 88314.")
    failed = h.input_transcription_failed("item_u1", "audio unintelligible")
    assert rte.parse(failed) == rte.TranscriptionFailed("item_u1", "audio unintelligible")


def test_responses_created_and_done_in_band() -> None:
    assert rte.parse(h.response_created("resp_1")) == rte.ResponseCreated("resp_1", out_of_band=False)
    usage = h.usage(1000, 200)
    done = rte.ResponseDone("resp_1", False, usage, "completed")
    assert rte.parse(h.response_done("resp_1", usage_=usage)) == done
    assert rte.parse(h.response_done("resp_1", "cancelled", reason="turn_detected")) == rte.ResponseDone(
        "resp_1", False, None, "cancelled", "turn_detected"
    )


def test_output_item_done_carries_a_function_call_item() -> None:
    item = h.function_call_item("item_f1", "lookup_order", '{"n": 1}')
    assert rte.parse(h.output_item_done("resp_1", item)) == rte.OutputItemDone("resp_1", item)
    assert isinstance(rte.parse({"type": "response.output_item.done"}), rte.Invalid)


def test_mcp_progress_events_are_ignored_and_a_failed_listing_names_its_item() -> None:
    """OpenAI runs MCP calls; the items say what happened, so their progress events are known
    and ignored, except a failed tool listing, which the call logs, and a call's start."""
    at = {"output_index": 0}
    in_response = {**at, "response_id": "resp_1"}
    for event in (
        h.mcp_event("mcp_list_tools.in_progress", "item_l1"),
        h.mcp_event("mcp_list_tools.completed", "item_l1"),
        h.mcp_event("response.mcp_call_arguments.delta", "item_m1", delta='{"q"', **in_response),
        h.mcp_event("response.mcp_call_arguments.done", "item_m1", arguments='{"q": 1}', **in_response),
        h.mcp_event("response.mcp_call.completed", "item_m1", **at),
        h.mcp_event("response.mcp_call.failed", "item_m2", **at),
    ):
        assert rte.parse(event) == rte.Ignored(event["type"])
    assert rte.parse(h.mcp_event("mcp_list_tools.failed", "item_l2")) == rte.McpListFailed("item_l2")
    started = h.mcp_event("response.mcp_call.in_progress", "item_m1", **at)
    assert rte.parse(started) == rte.McpCallStarted("item_m1")  # the start of the call's duration
    assert isinstance(rte.parse({"type": "response.mcp_call.in_progress"}), rte.Invalid)
    assert isinstance(rte.parse({"type": "mcp_list_tools.failed"}), rte.Invalid)


def test_output_item_done_carries_an_mcp_call_item() -> None:
    item = h.mcp_call_item("item_m1", "docs", "search", '{"q": 1}', output="found")
    assert rte.parse(h.output_item_done("resp_1", item, 0)) == rte.OutputItemDone("resp_1", item)


def test_responses_tagged_with_a_purpose_are_out_of_band() -> None:
    tag = {"purpose": "summary"}
    assert rte.parse(h.response_created("resp_9", metadata=tag)) == rte.ResponseCreated("resp_9", True)
    done = rte.parse(h.response_done("resp_9", usage_=h.usage(), metadata=tag))
    assert isinstance(done, rte.ResponseDone) and done.out_of_band


def test_audio_delta_keeps_the_base64_text() -> None:
    event = h.audio_delta("resp_1", "item_a1", b"\x01\x02\x03")
    assert rte.parse(event) == rte.AudioDelta("item_a1", "resp_1", event["delta"])


def test_audio_done_and_the_assistant_transcript() -> None:
    assert rte.parse(h.audio_done("resp_1", "item_a1")) == rte.AudioDone("item_a1")
    delta = h.transcript_delta("resp_1", "item_a1", "Your appointment ")
    assert rte.parse(delta) == rte.TranscriptDelta("item_a1", "Your appointment ")
    done = h.transcript_done("resp_1", "item_a1", "Your appointment is on Friday.")
    assert rte.parse(done) == rte.TranscriptDone("item_a1", "Your appointment is on Friday.")


def test_error_carries_code_message_type_and_the_failed_client_event() -> None:
    event = h.error("session_expired", "Your session hit the maximum duration.", client_event_id="evt_x")
    parsed = rte.parse(event)
    assert parsed == rte.ServerError(
        "session_expired", "Your session hit the maximum duration.", "invalid_request_error", "evt_x"
    )
    assert isinstance(parsed, rte.ServerError) and not parsed.harmless_race


@pytest.mark.parametrize("code", ["response_cancel_not_active", "conversation_already_has_active_response"])
def test_the_two_races_of_protocols_8_2_are_harmless(code: str) -> None:
    parsed = rte.parse(h.error(code, "race"))
    assert isinstance(parsed, rte.ServerError) and parsed.harmless_race


def test_an_error_without_details_is_still_an_error() -> None:
    assert rte.parse({"type": "error"}) == rte.ServerError(None, None, None, None)
    assert rte.parse(h.error(None, "no code")) == rte.ServerError(
        None, "no code", "invalid_request_error", None
    )


# ----- ignored, unknown ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        h.session_created(h.PCMU),
        h.committed("item_u1"),
        h.item_truncated("item_a1", 100),
        h.rate_limits_updated(),
    ],
    ids=lambda e: e["type"],
)
def test_known_unused_events_are_ignored(event: dict[str, Any]) -> None:
    assert rte.parse(event) == rte.Ignored(event["type"])


def test_every_type_of_protocols_9_2_is_ignored_and_none_is_also_handled() -> None:
    for event_type in rte.IGNORED_TYPES:
        assert rte.parse({"type": event_type}) == rte.Ignored(event_type)
    assert not rte.IGNORED_TYPES & rte._PARSERS.keys()


def test_webrtc_only_and_made_up_types_are_unknown() -> None:
    assert rte.parse(h.output_audio_buffer_started("resp_1")) == rte.Unknown("output_audio_buffer.started")
    assert rte.parse({"type": "response.audio.delta", "delta": "AAAA"}) == rte.Unknown("response.audio.delta")


# ----- a missing or ill-typed field -------------------------------------------------------------


def _without(event: dict[str, Any], *path: str) -> dict[str, Any]:
    event = copy.deepcopy(event)
    target = event
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return event


def _with(event: dict[str, Any], key: str, value: object) -> dict[str, Any]:
    return {**event, key: value}


@pytest.mark.parametrize(
    "event",
    [
        _without(h.speech_started("item_u1"), "item_id"),
        _without(h.speech_started("item_u1"), "audio_start_ms"),
        _with(h.speech_started("item_u1"), "audio_start_ms", "1000"),
        _with(h.speech_stopped("item_u1"), "audio_end_ms", True),
        _without(h.item_added(h.user_audio_item("item_u1")), "item"),
        _without(h.item_added(h.user_audio_item("item_u1")), "item", "id"),
        _with(h.item_done(h.user_audio_item("item_u1")), "item", ["not", "an", "object"]),
        _without(h.item_deleted("item_u1"), "item_id"),
        _without(h.input_transcription_completed("item_u1", "hi"), "item_id"),
        _without(h.input_transcription_completed("item_u1", "hi"), "transcript"),
        _with(h.input_transcription_failed("item_u1"), "item_id", None),
        _with(h.response_created("resp_1"), "response", None),
        _with(h.response_done("resp_1"), "response", "resp_1"),
        _without(h.audio_delta("resp_1", "item_a1", b"\x00"), "item_id"),
        _with(h.audio_delta("resp_1", "item_a1", b"\x00"), "delta", None),
        _without(h.audio_done("resp_1", "item_a1"), "item_id"),
        _with(h.transcript_delta("resp_1", "item_a1", "x"), "item_id", 7),
        _without(h.transcript_done("resp_1", "item_a1", "x"), "transcript"),
    ],
    ids=lambda e: e["type"],
)
def test_a_handled_event_without_a_field_it_needs_is_invalid_with_a_reason(event: dict[str, Any]) -> None:
    parsed = rte.parse(event)
    assert isinstance(parsed, rte.Invalid), parsed
    assert parsed.type == event["type"] and parsed.reason


def test_the_item_id_is_never_made_up() -> None:
    for event in (
        _without(h.input_transcription_completed("item_u1", "hi"), "item_id"),
        _without(h.item_done(h.user_text_item("item_t", "hi")), "item", "id"),
    ):
        parsed = rte.parse(event)
        assert isinstance(parsed, rte.Invalid) and "item_id" not in rte.Invalid.__dataclass_fields__


def test_an_event_without_a_type_or_not_an_object_is_invalid() -> None:
    assert rte.parse({"item_id": "x"}) == rte.Invalid("", "the event has no string type")
    assert rte.parse({"type": 5}) == rte.Invalid("", "the event has no string type")
    assert isinstance(rte.parse([]), rte.Invalid)  # type: ignore[arg-type]


def test_optional_fields_of_the_wrong_type_become_none() -> None:
    delta = _with(h.audio_delta("resp_1", "item_a1", b"\x00"), "response_id", ["resp_1"])
    assert rte.parse(delta) == rte.AudioDelta("item_a1", None, delta["delta"])
    added = _with(h.item_added(h.user_audio_item("item_u1")), "previous_item_id", 3)
    assert rte.parse(added) == rte.ItemAdded("item_u1", added["item"], None)
    metadata = h.response_created("resp_1")
    metadata["response"]["metadata"] = "summary"
    assert rte.parse(metadata) == rte.ResponseCreated("resp_1", False)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=12,
)
_types = st.sampled_from(
    [*rte._PARSERS, "response.output_audio.delta", *sorted(rte.IGNORED_TYPES)[:3], "x.y"]
)
_keys = st.sampled_from(
    ["item_id", "item", "previous_item_id", "delta", "transcript", "response", "response_id", "error",
     "session", "audio_start_ms", "audio_end_ms"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(kind=_types, fields=st.dictionaries(_keys, _json, max_size=5))
def test_parse_never_raises(kind: str, fields: dict[str, Any]) -> None:
    assert isinstance(rte.parse({"type": kind, **fields}), rte.RealtimeEvent)


# ----- what the session does with an odd event -------------------------------------------------


def _active_session() -> CallSession:
    session = CallSession(CallConfig(agent=AgentConfig(audio_mode="pcmu")))
    session.receive_twilio(tw.parse(h.tw_start()), 0)
    session.realtime_connected(0)
    session.receive_realtime(rte.parse(h.session_updated(h.PCMU)), 0)
    assert session.phase == "active"
    return session


def test_an_invalid_event_is_counted_and_changes_nothing() -> None:
    session = _active_session()
    session.receive_realtime(rte.parse(h.item_added(h.user_audio_item("item_u1"))), 10)
    no_id = _without(h.input_transcription_completed("item_u1", "hello"), "item_id")
    assert session.receive_realtime(rte.parse(no_id), 20) == []
    assert session.stats.invalid_realtime == 1 and session.stats.unknown_realtime == 0
    assert session.conversation.get("None") is None
    (turn,) = session.conversation.transcript()
    assert turn.item_id == "item_u1" and turn.status == "pending"
