"""callbot.core.twilio: Media Streams messages in (never raising) and out (docs/protocols.md §4)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from core_helpers import (
    ACCOUNT_SID,
    CALL_SID,
    STREAM_SID,
    tw_connected,
    tw_dtmf,
    tw_mark,
    tw_media,
    tw_media_dict,
    tw_start,
    tw_start_dict,
    tw_stop,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from callbot.core import twilio as tw

SILENCE = b"\xff" * 160
SPEECH = bytes(range(160))


# ----- well-formed messages -> parsed types ------------------------------------------------------

GOOD: list[tuple[str, str | bytes, Any]] = [
    ("connected", tw_connected(), tw.Connected(protocol="Call", version="1.0.0")),
    (
        "start with custom parameters and media format",
        tw_start({"token": "n8Kq2xV7dP0fR4aZ", "from": "+15551230000", "to": "+15559870000"}),
        tw.Start(
            stream_sid=STREAM_SID,
            call_sid=CALL_SID,
            account_sid=ACCOUNT_SID,
            custom_parameters={"token": "n8Kq2xV7dP0fR4aZ", "from": "+15551230000", "to": "+15559870000"},
            encoding="audio/x-mulaw",
            sample_rate=8000,
            channels=1,
        ),
    ),
    (
        "start with an unusual media format is parsed as sent",
        tw_start(encoding="audio/l16", sample_rate=16000, channels=2),
        tw.Start(STREAM_SID, CALL_SID, ACCOUNT_SID, {}, "audio/l16", 16000, 2),
    ),
    (
        "media: string timestamp -> int, payload decoded",
        tw_media(SPEECH, timestamp_ms=820, chunk=41),
        tw.Media(STREAM_SID, base64.b64encode(SPEECH).decode(), SPEECH, 820),
    ),
    (
        "media: silent frame (216 base64 chars)",
        tw_media(SILENCE, timestamp_ms=0),
        tw.Media(STREAM_SID, "////" * 53 + "/w==", SILENCE, 0),
    ),
    (
        "media as bytes (websocket bytes frame)",
        tw_media(SILENCE, timestamp_ms=20).encode(),
        tw.Media(STREAM_SID, "////" * 53 + "/w==", SILENCE, 20),
    ),
    ("mark", tw_mark("g0.17"), tw.Mark(STREAM_SID, "g0.17")),
    ("dtmf", tw_dtmf("5"), tw.Dtmf(STREAM_SID, "5")),
    ("dtmf star", tw_dtmf("*"), tw.Dtmf(STREAM_SID, "*")),
    ("stop", tw_stop(), tw.Stop(STREAM_SID)),
]


@pytest.mark.parametrize(("raw", "expected"), [g[1:] for g in GOOD], ids=[g[0] for g in GOOD])
def test_parse_well_formed_messages(raw: str | bytes, expected: Any) -> None:
    assert tw.parse(raw) == expected


def test_start_takes_stream_sid_from_the_top_level_when_start_lacks_it() -> None:
    msg = tw_start_dict()
    del msg["start"]["streamSid"]
    event = tw.parse(json.dumps(msg))
    assert isinstance(event, tw.Start)
    assert event.stream_sid == STREAM_SID


def test_start_custom_parameters_are_strings() -> None:
    msg = tw_start_dict()
    msg["start"]["customParameters"] = {"n": 5, "flag": True}
    event = tw.parse(json.dumps(msg))
    assert isinstance(event, tw.Start)
    assert event.custom_parameters == {"n": "5", "flag": "True"}


def test_media_preserves_the_exact_payload_text() -> None:
    raw = tw_media_dict(SPEECH, timestamp_ms=40)
    event = tw.parse(json.dumps(raw))
    assert isinstance(event, tw.Media)
    assert event.payload == raw["media"]["payload"]
    assert event.timestamp_ms == 40


# ----- bad inputs -> Invalid with a reason, never an exception ---------------------------------


def _media_with(**media: Any) -> str:
    msg = tw_media_dict(SILENCE, 20)
    msg["media"].update(media)
    return json.dumps({k: v for k, v in msg.items()})


def _media_without_payload() -> str:
    msg = tw_media_dict(SILENCE, 20)
    del msg["media"]["payload"]
    return json.dumps(msg)


def _start_with(**start: Any) -> str:
    msg = tw_start_dict()
    msg["start"].update(start)
    return json.dumps(msg)


def _start_without(key: str) -> str:
    msg = tw_start_dict()
    del msg["start"][key]
    return json.dumps(msg)


def _start_format(**fmt: Any) -> str:
    msg = tw_start_dict()
    msg["start"]["mediaFormat"].update(fmt)
    return json.dumps(msg)


BAD: list[tuple[str, str | bytes, str]] = [
    ("not JSON", "hello twilio", ""),
    ("truncated JSON", '{"event": "media", ', ""),
    ("empty text", "", ""),
    ("invalid UTF-8 bytes", b'{"event": "\xff\xfe"}', ""),
    ("JSON array", '[{"event": "media"}]', ""),
    ("JSON string", '"media"', ""),
    ("JSON number", "42", ""),
    ("JSON null", "null", ""),
    ("no event key", json.dumps({"streamSid": STREAM_SID}), ""),
    ("unknown event", json.dumps({"event": "hangup", "streamSid": STREAM_SID}), "hangup"),
    ("event is not a string", json.dumps({"event": 7, "streamSid": STREAM_SID}), ""),
    ("media without media object", json.dumps({"event": "media", "streamSid": STREAM_SID}), "media"),
    (
        "media object is a list",
        json.dumps({"event": "media", "media": [1], "streamSid": STREAM_SID}),
        "media",
    ),
    ("media without payload", _media_without_payload(), "media"),
    ("media payload is a number", _media_with(payload=12345), "media"),
    ("media payload bad base64 characters", _media_with(payload="!!!notbase64!!!"), "media"),
    ("media payload bad base64 padding", _media_with(payload="abc"), "media"),
    ("media payload with embedded newline", _media_with(payload="////\n////"), "media"),
    ("mark without name", json.dumps({"event": "mark", "streamSid": STREAM_SID, "mark": {}}), "mark"),
    (
        "mark name is a number",
        json.dumps({"event": "mark", "streamSid": STREAM_SID, "mark": {"name": 3}}),
        "mark",
    ),
    ("mark object missing", json.dumps({"event": "mark", "streamSid": STREAM_SID}), "mark"),
    ("dtmf without digit", json.dumps({"event": "dtmf", "streamSid": STREAM_SID, "dtmf": {}}), "dtmf"),
    ("dtmf object is a string", json.dumps({"event": "dtmf", "streamSid": STREAM_SID, "dtmf": "5"}), "dtmf"),
    ("start without start object", json.dumps({"event": "start", "streamSid": STREAM_SID}), "start"),
    ("start without callSid", _start_without("callSid"), "start"),
    ("start with numeric callSid", _start_with(callSid=12345), "start"),
    (
        "start without any streamSid",
        json.dumps({"event": "start", "start": {"callSid": CALL_SID}}),
        "start",
    ),
    # Numbers Twilio sends must be numbers (docs/protocols.md §4.1); garbage must not be silently
    # replaced by a default: a sampleRate of "abc" must not pass the call's 8000 Hz check.
    ("media timestamp is garbage", _media_with(timestamp="soon"), "media"),
    ("media timestamp is a list", _media_with(timestamp=[820]), "media"),
    ("start sampleRate is garbage", _start_format(sampleRate="eight thousand"), "start"),
    ("start channels is garbage", _start_format(channels={"n": 1}), "start"),
]


@pytest.mark.parametrize(("raw", "event"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_becomes_invalid_with_a_reason(raw: str | bytes, event: str) -> None:
    parsed = tw.parse(raw)
    assert isinstance(parsed, tw.Invalid), parsed
    assert parsed.reason.strip()
    assert parsed.event == event


def test_invalid_reasons_say_what_was_wrong() -> None:
    not_json = tw.parse("nope")
    not_object = tw.parse("[]")
    unknown = tw.parse(json.dumps({"event": "hangup"}))
    bad_b64 = tw.parse(_media_with(payload="abc"))
    assert isinstance(not_json, tw.Invalid) and "JSON" in not_json.reason
    assert isinstance(not_object, tw.Invalid) and "object" in not_object.reason
    assert isinstance(unknown, tw.Invalid) and "hangup" in unknown.reason
    assert isinstance(bad_b64, tw.Invalid) and "base64" in bad_b64.reason
    assert len({not_json.reason, not_object.reason, unknown.reason, bad_b64.reason}) == 4


# ----- the media fast branch of parse() is the general parser, only quicker ----------------------

_field = st.one_of(
    st.none(),
    st.integers(min_value=-5, max_value=10**6),
    st.sampled_from(["820", "0", "007", "-1", "", "²", "12a", " 5"]),
    st.sampled_from([base64.b64encode(SPEECH).decode(), "abc", "", "////", "AAAA\n", "A===="]),
    st.lists(st.integers(min_value=-1000, max_value=1000), max_size=2),  # within orjson's int range
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    sid=_field | st.just(STREAM_SID),
    payload=_field,
    timestamp=_field,
    media_is_object=st.booleans(),
)
def test_media_fast_branch_gives_what_the_general_parser_gives(
    sid: Any, payload: Any, timestamp: Any, media_is_object: bool
) -> None:
    media: Any = {"track": "inbound", "chunk": "2", "timestamp": timestamp, "payload": payload}
    msg = {"event": "media", "sequenceNumber": "3", "media": media if media_is_object else [media]}
    if sid is not None:
        msg["streamSid"] = sid
    raw = json.dumps(msg)
    assert tw.parse(raw) == tw._parse_media(json.loads(raw), tw._str(msg.get("streamSid")))


def test_well_formed_media_takes_every_field_from_the_message() -> None:
    parsed = tw.parse(tw_media(SPEECH, timestamp_ms=1234))
    assert parsed == tw.Media(STREAM_SID, base64.b64encode(SPEECH).decode(), SPEECH, 1234)


# ----- never raises ----------------------------------------------------------------------------

_json_leaf = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
_json = st.recursive(
    _json_leaf,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)
_event_names = st.sampled_from(["connected", "start", "media", "mark", "dtmf", "stop", "clear", ""])


@settings(max_examples=200, deadline=None)
@given(st.text() | st.binary())
def test_parse_never_raises_on_arbitrary_text_or_bytes(raw: str | bytes) -> None:
    result = tw.parse(raw)
    assert isinstance(result, tw.Connected | tw.Start | tw.Media | tw.Mark | tw.Dtmf | tw.Stop | tw.Invalid)


@settings(max_examples=100, deadline=None)
@given(
    _event_names,
    st.dictionaries(
        st.sampled_from(["streamSid", "start", "media", "mark", "dtmf", "stop", "sequenceNumber", "x"]),
        _json,
        max_size=5,
    ),
    st.dictionaries(
        st.sampled_from(
            [
                "streamSid",
                "callSid",
                "accountSid",
                "customParameters",
                "mediaFormat",
                "payload",
                "timestamp",
                "name",
                "digit",
                "chunk",
            ]
        ),
        _json,
        max_size=6,
    ),
)
def test_parse_never_raises_on_arbitrary_json_objects(
    event: str, top: dict[str, Any], inner: dict[str, Any]
) -> None:
    msg = dict(top)
    msg["event"] = event
    if event in ("start", "media", "mark", "dtmf", "stop"):
        msg[event] = inner
    result = tw.parse(json.dumps(msg))
    assert isinstance(result, tw.Connected | tw.Start | tw.Media | tw.Mark | tw.Dtmf | tw.Stop | tw.Invalid)
    if isinstance(result, tw.Media):
        assert base64.b64decode(result.payload, validate=True) == result.audio
        assert isinstance(result.timestamp_ms, int)


@settings(max_examples=100, deadline=None)
@given(_json)
def test_parse_never_raises_on_arbitrary_json_values(value: Any) -> None:
    assert tw.parse(json.dumps(value)) is not None


# ----- encoders (docs/protocols.md §4.3: exactly these fields, no track, no sequenceNumber) ---------


def test_encode_media_is_exactly_twilio_outbound_media() -> None:
    msg = json.loads(tw.encode_media(STREAM_SID, SPEECH))
    assert msg == {
        "event": "media",
        "streamSid": STREAM_SID,
        "media": {"payload": base64.b64encode(SPEECH).decode()},
    }
    assert base64.b64decode(msg["media"]["payload"], validate=True) == SPEECH


def test_encode_media_silence_is_216_chars_without_newline() -> None:
    text = tw.encode_media(STREAM_SID, SILENCE)
    payload = json.loads(text)["media"]["payload"]
    assert len(payload) == 216
    assert payload == "////" * 53 + "/w=="
    assert "\n" not in text


def test_encode_mark_is_exactly_twilio_mark() -> None:
    assert json.loads(tw.encode_mark(STREAM_SID, "g2.41")) == {
        "event": "mark",
        "streamSid": STREAM_SID,
        "mark": {"name": "g2.41"},
    }


def test_encode_clear_is_exactly_twilio_clear() -> None:
    assert json.loads(tw.encode_clear(STREAM_SID)) == {"event": "clear", "streamSid": STREAM_SID}


def test_encoded_mark_round_trips_through_parse_as_twilios_echo() -> None:
    # Twilio echoes the mark with the same name (docs/protocols.md §4.4); our parser reads it back.
    echoed = json.loads(tw.encode_mark(STREAM_SID, "g0.3"))
    echoed["sequenceNumber"] = "63"
    assert tw.parse(json.dumps(echoed)) == tw.Mark(STREAM_SID, "g0.3")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=400))
def test_encode_media_round_trips_any_audio(audio: bytes) -> None:
    sent = json.loads(tw.encode_media(STREAM_SID, audio))
    assert set(sent) == {"event", "streamSid", "media"}
    assert set(sent["media"]) == {"payload"}
    assert base64.b64decode(sent["media"]["payload"], validate=True) == audio
