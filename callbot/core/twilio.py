"""Twilio Media Streams messages: parse what Twilio sends, encode what we send back.

Parsing never raises: a peer's odd message becomes `Invalid` with a reason the bridge logs, so
one bad frame cannot end a call (docs/protocols.md §4.1-§4.3). Numbers Twilio sends as strings
(`timestamp`, `chunk`, `sequenceNumber`) are converted to int here, once.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass, field

import orjson
import pybase64

from callbot.errors import RemoteError


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    custom_parameters: dict[str, str] = field(default_factory=dict)
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000
    channels: int = 1


@dataclass(frozen=True, slots=True)
class Media:
    """One chunk of caller audio. `payload` is Twilio's base64 text, `audio` the decoded mu-law."""

    stream_sid: str
    payload: str
    audio: bytes
    timestamp_ms: int


@dataclass(frozen=True, slots=True)
class Mark:
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    stream_sid: str
    digit: str


@dataclass(frozen=True, slots=True)
class Stop:
    stream_sid: str


@dataclass(frozen=True, slots=True)
class Invalid:
    """A message we could not use; `reason` says why, for the log."""

    reason: str
    event: str = ""


TwilioEvent = Connected | Start | Media | Mark | Dtmf | Stop | Invalid


def _str(obj: object) -> str:
    return obj if isinstance(obj, str) else ""


class _NotANumber(RemoteError, ValueError):
    """A number field of a Twilio message that is not a number (the peer's error, never raised out)."""


def _int(obj: object, default: int = 0) -> int:
    """Twilio sends numbers as strings of digits (or JSON ints); anything else is the peer's error."""
    if obj is None:
        return default
    if isinstance(obj, int) and not isinstance(obj, bool):
        return obj
    if isinstance(obj, str) and obj.isascii() and obj.isdigit():
        return int(obj)
    raise _NotANumber(repr(obj)[:40])


def _parse_media(msg: dict[str, object], sid: str) -> TwilioEvent:
    media = msg.get("media")
    if not isinstance(media, dict):
        return Invalid("media event without a media object", "media")
    payload = media.get("payload")
    if not isinstance(payload, str):
        return Invalid("media event without a string payload", "media")
    try:
        audio = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        return Invalid("media payload is not valid base64", "media")
    try:
        timestamp = _int(media.get("timestamp"))
    except _NotANumber as exc:
        return Invalid(f"media timestamp is not a number: {exc}", "media")
    return Media(sid, payload, audio, timestamp)


def _parse_start(msg: dict[str, object], sid: str) -> TwilioEvent:
    start = msg.get("start")
    if not isinstance(start, dict):
        return Invalid("start event without a start object", "start")
    stream_sid = _str(start.get("streamSid")) or sid
    call_sid = _str(start.get("callSid"))
    if not stream_sid or not call_sid:
        return Invalid("start event without streamSid or callSid", "start")
    params = start.get("customParameters")
    custom = {str(k): str(v) for k, v in params.items()} if isinstance(params, dict) else {}
    fmt = start.get("mediaFormat")
    if not isinstance(fmt, dict):
        fmt = {}
    try:
        sample_rate = _int(fmt.get("sampleRate"), 8000)
        channels = _int(fmt.get("channels"), 1)
    except _NotANumber as exc:
        return Invalid(f"start mediaFormat has a field that is not a number: {exc}", "start")
    return Start(
        stream_sid=stream_sid,
        call_sid=call_sid,
        account_sid=_str(start.get("accountSid")),
        custom_parameters=custom,
        encoding=_str(fmt.get("encoding")) or "audio/x-mulaw",
        sample_rate=sample_rate,
        channels=channels,
    )


def parse(raw: str | bytes) -> TwilioEvent:
    """Turn one websocket text frame from Twilio into an event (never raises)."""
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return Invalid("not JSON")
    if not isinstance(msg, dict):
        return Invalid("JSON message is not an object")
    event = msg.get("event")
    if event == "media":
        # 50 a second per call: the well-formed message in as few Python calls as possible;
        # anything else goes through `_parse_media`, which names what is wrong.
        sid = msg.get("streamSid")
        media = msg.get("media")
        if type(sid) is str and type(media) is dict:
            payload = media.get("payload")
            ts = media.get("timestamp")
            if type(payload) is str and type(ts) is str and ts.isdigit() and ts.isascii():
                try:
                    audio = binascii.a2b_base64(payload, strict_mode=True)
                except (binascii.Error, ValueError):
                    return Invalid("media payload is not valid base64", "media")
                return Media(sid, payload, audio, int(ts))
        return _parse_media(msg, _str(sid))
    sid = _str(msg.get("streamSid"))
    if event == "mark":
        mark = msg.get("mark")
        name = mark.get("name") if isinstance(mark, dict) else None
        if not isinstance(name, str):
            return Invalid("mark event without a name", "mark")
        return Mark(sid, name)
    if event == "start":
        return _parse_start(msg, sid)
    if event == "connected":
        return Connected(_str(msg.get("protocol")), _str(msg.get("version")))
    if event == "dtmf":
        dtmf = msg.get("dtmf")
        digit = dtmf.get("digit") if isinstance(dtmf, dict) else None
        if not isinstance(digit, str):
            return Invalid("dtmf event without a digit", "dtmf")
        return Dtmf(sid, digit)
    if event == "stop":
        return Stop(sid)
    return Invalid(f"unknown event {event!r}", _str(event))


# --- what we send (docs/protocols.md §4.3); the stream sid is echoed on every message ---


def encode_media(stream_sid: str, ulaw: bytes) -> str:
    payload = pybase64.b64encode_as_string(ulaw)
    return orjson.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}}).decode()


def encode_mark(stream_sid: str, name: str) -> str:
    return orjson.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}}).decode()


def encode_clear(stream_sid: str) -> str:
    return orjson.dumps({"event": "clear", "streamSid": stream_sid}).decode()
