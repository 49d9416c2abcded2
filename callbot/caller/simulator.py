"""A simulated Twilio caller: webhook, TwiML, Media Streams socket, playback buffer, recording.

It behaves towards the bot the way Twilio does (docs/protocols.md §2-§5): signed form POST to
`/twilio/voice`, `<Connect><Stream>` parsing, a signed WebSocket upgrade, `connected` + `start`,
then one 160-byte mu-law `media` frame every 20 ms whether or not the caller talks, and a playback
buffer that honours `mark` and `clear` exactly as Twilio documents. Everything the bot sends is
validated, because a real Twilio call would silently misbehave on the same mistakes.

Public API (re-exported here): `TwilioCaller`, `CallResult`, the script steps, the mu-law codec,
and the live audio protocols (`Live` steps read an `AudioSource`; `audio_sink` hears playback).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException

from callbot.caller.audio import AudioSink, AudioSource
from callbot.caller.codec import mulaw_decode, mulaw_encode
from callbot.caller.result import CallResult, speech_intervals
from callbot.caller.script import (
    CallerScript,
    Dtmf,
    HangUp,
    Live,
    Say,
    SayDuringAssistant,
    ScriptCursor,
    Silence,
    Step,
    WaitForAssistant,
)
from callbot.caller.stream import SessionConfig, StreamSession

__all__ = [
    "USER_AGENT",
    "AudioSink",
    "AudioSource",
    "CallResult",
    "CallerScript",
    "Dtmf",
    "EventHook",
    "HangUp",
    "Live",
    "Say",
    "SayDuringAssistant",
    "Silence",
    "TwilioCaller",
    "WaitForAssistant",
    "mulaw_decode",
    "mulaw_encode",
    "speech_intervals",
]

log = logging.getLogger(__name__)

USER_AGENT = "callbot-sim (Twilio Media Streams simulator)"
"""The User-Agent of the Media Streams upgrade."""

EventHook = Callable[[str, dict[str, Any]], None]
"""Observer for live display, called as hook(kind, data). Kinds: webhook, twiml, start, step,
wait_done, wait_timeout, barge_in, dtmf, assistant_audio_start, assistant_audio_end, mark,
mark_echo, clear, violation, hangup, server_closed, max_call_reached, closed, error."""

_NETWORK_ERRORS = (OSError, httpx.HTTPError, WebSocketException, asyncio.TimeoutError)


def _random_sid(prefix: str) -> str:
    """Twilio SIDs are a two-letter prefix and 32 hex digits."""
    return prefix + secrets.token_hex(16)


def _stream_ws_url(webhook_url: str, url: str) -> str:
    """Resolve a (possibly relative) <Stream url> against the webhook URL, as a ws(s) URL."""
    parts = urlsplit(urljoin(webhook_url, url))
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))


class TwilioCaller:
    """Places one simulated inbound call per `run()` against a callbot base URL.

    `speed` > 1 runs the 20 ms clock faster (tests, benchmark); all recorded times stay on the
    call timeline, so results do not depend on speed. `max_call_s` bounds a run on that timeline
    so a bot that never replies cannot hang a test.

    `public_base_url` simulates Twilio reaching the bot through a tunnel or TLS terminator: the
    webhook signature is computed over the public URL and the <Stream url> is signed as written
    in the TwiML, but both requests are actually sent to `base_url`'s host.

    `audio_sink` receives every tick's playback as it happens (a softphone's speaker); together
    with a `Live(source)` step (a microphone) the simulator becomes a phone.

    Hooks for a subclass (the load benchmark's): `new_stream_session` builds the session that
    runs the stream; `run_stream` is the whole media leg, and may run it on another transport
    (with `stream_connection` for where to connect and how the upgrade is signed).
    """

    def __init__(
        self,
        base_url: str,
        *,
        auth_token: str | None,
        account_sid: str | None = None,
        call_sid: str | None = None,
        from_number: str = "+15551230000",
        to_number: str = "+15559870000",
        speed: float = 1.0,
        http_client: httpx.AsyncClient | None = None,
        on_event: EventHook | None = None,
        webhook_path: str = "/twilio/voice",
        extra_params: dict[str, str] | None = None,
        max_call_s: float = 600.0,
        public_base_url: str | None = None,
        audio_sink: AudioSink | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.base_url = base_url.rstrip("/")
        self.auth_token = auth_token
        self.account_sid = account_sid or _random_sid("AC")
        self.call_sid = call_sid or _random_sid("CA")
        self.from_number = from_number
        self.to_number = to_number
        self.speed = speed
        self.http_client = http_client
        self.on_event = on_event
        self.webhook_url = self.base_url + webhook_path
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None
        self.signed_webhook_url = (self.public_base_url or self.base_url) + webhook_path
        self.extra_params = dict(extra_params or {})
        self.max_call_s = max_call_s
        self.audio_sink = audio_sink
        self.stream: StreamSession | None = None
        """The media stream of the call in progress (for a fake Twilio REST API to end it)."""

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        """Tell the observer; its failures are logged, never allowed to break the call."""
        if self.on_event is None:
            return
        try:
            self.on_event(kind, data)
        except Exception:
            log.exception("caller on_event hook failed for %s", kind)

    def webhook_params(self) -> dict[str, str]:
        """The form fields Twilio posts for an inbound call that is ringing."""
        params = {
            "AccountSid": self.account_sid,
            "CallSid": self.call_sid,
            "From": self.from_number,
            "To": self.to_number,
            "CallStatus": "ringing",
            "ApiVersion": "2010-04-01",
            "Direction": "inbound",
        }
        params.update(self.extra_params)
        return params

    async def run(self, script: CallerScript | Iterable[Step]) -> CallResult:
        """Place the call, play `script`, and return everything observed."""
        return await self._play(script)

    async def run_twiml(self, twiml: str, script: CallerScript | Iterable[Step]) -> CallResult:
        """Play a call whose TwiML is already known (an outbound call's, given to `calls.create`):
        no webhook, straight to its `<Connect><Stream>`."""
        return await self._play(script, twiml)

    async def _play(self, script: CallerScript | Iterable[Step], twiml: str | None = None) -> CallResult:
        result = CallResult(call_sid=self.call_sid, account_sid=self.account_sid)
        started = time.monotonic()
        try:
            if twiml is None:
                stream_url = await self._webhook(result)
            else:
                result.twiml = twiml
                stream_url = self._parse_twiml(result)
            if stream_url is not None:
                await self.run_stream(stream_url, script, result)
        except _NETWORK_ERRORS as exc:
            result.outcome = "error"
            result.error = f"{type(exc).__name__}: {exc}"
            self.emit("error", {"error": result.error})
        finally:
            result.wall_s = time.monotonic() - started
        return result

    async def _webhook(self, result: CallResult) -> str | None:
        """POST the voice webhook and return the stream URL, or None when the call ends here."""
        params = self.webhook_params()
        headers = {"User-Agent": "TwilioProxy/1.1", "Accept": "*/*"}
        if self.auth_token is not None:
            validator = RequestValidator(self.auth_token)
            headers["X-Twilio-Signature"] = validator.compute_signature(self.signed_webhook_url, params)
        if self.http_client is not None:
            response = await self.http_client.post(self.webhook_url, data=params, headers=headers)
        else:
            async with httpx.AsyncClient(timeout=15.0, trust_env=False) as client:
                response = await client.post(self.webhook_url, data=params, headers=headers)
        result.http_status = response.status_code
        result.twiml = response.text
        self.emit("webhook", {"status": response.status_code, "url": self.webhook_url})
        if not 200 <= response.status_code < 300:
            result.outcome = "webhook_error"
            result.error = f"webhook returned HTTP {response.status_code}"
            return None
        content_type = response.headers.get("content-type", "")
        if not any(kind in content_type for kind in ("xml", "html")):
            result.violations.append(f"TwiML served as {content_type!r}, not text/xml")
        self.emit("twiml", {"twiml": result.twiml})
        return self._parse_twiml(result)

    def _parse_twiml(self, result: CallResult) -> str | None:
        """Find <Connect><Stream>; record parameters, or say why there is no stream."""
        try:
            root = ET.fromstring(result.twiml)
        except ET.ParseError as exc:
            result.outcome = "error"
            result.error = f"TwiML is not XML: {exc}"
            return None
        if root.tag != "Response":
            result.violations.append(f"TwiML root is <{root.tag}>, not <Response>")
        stream = root.find("./Connect/Stream")
        if stream is None:
            verbs = [child.tag for child in root]
            result.outcome = "no_stream"
            result.error = f"TwiML has no <Connect><Stream> (verbs: {', '.join(verbs) or 'none'})"
            return None
        url = stream.get("url", "")
        if not url:
            result.outcome = "error"
            result.error = "<Stream> has no url"
            return None
        stream_url = _stream_ws_url(self.signed_webhook_url, url)
        if urlsplit(stream_url).query:
            result.violations.append("<Stream url> has a query string; Twilio does not support it")
        result.stream_url = stream_url
        for param in stream.findall("Parameter"):
            name = param.get("name")
            if name is None:
                result.violations.append("<Parameter> without a name")
                continue
            value = param.get("value", "")
            if len(name) + len(value) >= 500:
                result.violations.append(f"<Parameter {name}> name+value is 500 characters or more")
            result.custom_parameters[name] = value
        return stream_url

    def stream_connection(self, stream_url: str) -> tuple[str, dict[str, str]]:
        """Where to open the stream and its headers: signed like Twilio signs the upgrade, and
        pointed at the local server when the TwiML names the public URL."""
        headers: dict[str, str] = {}
        if self.auth_token is not None:
            headers["x-twilio-signature"] = RequestValidator(self.auth_token).compute_signature(
                stream_url, {}
            )
        connect_url = stream_url
        if self.public_base_url is not None:
            local = urlsplit(_stream_ws_url(self.webhook_url, "/"))
            target = urlsplit(stream_url)
            connect_url = urlunsplit((local.scheme, local.netloc, target.path, target.query, ""))
        return connect_url, headers

    async def run_stream(
        self, stream_url: str, script: CallerScript | Iterable[Step], result: CallResult
    ) -> None:
        """Open the signed Media Streams socket and run the session on it."""
        connect_url, headers = self.stream_connection(stream_url)
        try:
            ws = await connect(
                connect_url,
                additional_headers=headers,
                compression=None,
                proxy=None,
                max_size=None,
                ping_interval=None,
                open_timeout=10,
                close_timeout=2,
                user_agent_header=USER_AGENT,
            )
        except InvalidStatus as exc:
            result.outcome = "ws_rejected"
            result.upgrade_status = exc.response.status_code
            result.error = f"WebSocket upgrade refused with HTTP {exc.response.status_code}"
            return
        config = SessionConfig(
            account_sid=self.account_sid,
            call_sid=self.call_sid,
            stream_sid=_random_sid("MZ"),
            speed=self.speed,
            max_call_s=self.max_call_s,
            emit=self.emit,
            sink=self.audio_sink,
        )
        session = self.new_stream_session(config, ws, ScriptCursor(script), result)
        self.stream = session
        await session.run()

    def twilio_ends(self, why: str) -> None:
        """What Twilio does to the media stream after a REST update of the call (hang-up or
        new TwiML): `stop` to the bot. Wire `FakeTwilioRest.on_update` to it."""
        if self.stream is not None:
            self.stream.twilio_ends(why)

    def new_stream_session(
        self, config: SessionConfig, ws: ClientConnection, cursor: ScriptCursor, result: CallResult
    ) -> StreamSession:
        """The session that runs one call's stream (a hook: the load bench adds timestamps)."""
        return StreamSession(config, ws, cursor, result)
