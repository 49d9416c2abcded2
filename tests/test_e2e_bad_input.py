"""Hostile and broken input against the real server: clear refusals, no crash, other calls unaffected."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest
import websockets
from twilio.request_validator import RequestValidator

from callbot.caller.simulator import HangUp, Say, Silence, WaitForAssistant
from callbot.errors import SettingsError
from callbot.settings import Settings
from callbot.testing.fake_realtime import Script
from tests.e2e_helpers import AUTH_TOKEN, PUBLIC_URL, running_rig, speech


async def test_voice_webhook_rejects_a_bad_signature_and_accepts_a_good_one() -> None:
    params = {"CallSid": "CA" + "1" * 32, "From": "+15551230000", "To": "+15559870000"}
    good = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + "/twilio/voice", params)
    async with running_rig() as rig, httpx.AsyncClient(base_url=rig.base_url) as http:
        bad = await http.post("/twilio/voice", data=params, headers={"X-Twilio-Signature": "bm9wZQ=="})
        missing = await http.post("/twilio/voice", data=params)
        ok = await http.post("/twilio/voice", data=params, headers={"X-Twilio-Signature": good})
    assert bad.status_code == 403 and missing.status_code == 403
    assert ok.status_code == 200 and ok.headers["content-type"].startswith("text/xml")
    assert '<Stream name="callbot-CA111' in ok.text and 'url="wss://bot.example.test/twilio/media"' in ok.text
    assert '<Parameter name="token"' in ok.text and '<Parameter name="from" value="+15551230000"' in ok.text


async def test_signature_checks_can_only_be_turned_off_explicitly() -> None:
    params = {"CallSid": "CA" + "2" * 32}
    async with (
        running_rig(validate_twilio_signatures=False) as rig,
        httpx.AsyncClient(base_url=rig.base_url) as http,
    ):
        unsigned = await http.post("/twilio/voice", data=params)
    assert unsigned.status_code == 200 and "<Connect>" in unsigned.text


def test_missing_settings_name_what_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "TWILIO_AUTH_TOKEN", "CALLBOT_PUBLIC_URL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SettingsError) as info:
        Settings(_env_file=None).check_serving()  # type: ignore[call-arg]
    message = str(info.value)
    assert "OPENAI_API_KEY" in message and "CALLBOT_PUBLIC_URL" in message and "TWILIO_AUTH_TOKEN" in message


async def _hostile_stream(base_url: str, frames: list[str | bytes]) -> int | None:
    """Open the media websocket directly and send `frames`; returns the close code (None = still open)."""
    url = base_url.replace("http://", "ws://") + "/twilio/media"
    async with websockets.connect(url, max_size=None) as ws:
        for frame in frames:
            await ws.send(frame)
        await asyncio.sleep(0.3)
        try:
            await asyncio.wait_for(ws.recv(), timeout=0.5)
        except TimeoutError:
            return None
        except websockets.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else 1006
        return None


async def test_garbage_frames_are_ignored_and_a_forged_start_is_refused_while_a_real_call_goes_on() -> None:
    script = Script(greeting="Hello there.", user_transcripts=["Fine, thanks."], replies=["Glad to hear it."])
    async with running_rig(script, max_message_bytes=8192) as rig:
        media = {"event": "media", "streamSid": "MZx", "media": {"payload": "////", "timestamp": "20"}}
        garbage: list[str | bytes] = [
            "not json at all",
            "[1, 2, 3]",
            orjson.dumps({"event": "surprise"}).decode(),
            orjson.dumps(media).decode(),  # media before start
            orjson.dumps({**media, "media": {"payload": "***not base64***"}}).decode(),
            "x" * 20_000,  # oversized
            b"\x00\x01binary",
        ]
        forged_start = {
            "event": "start",
            "streamSid": "MZforged",
            "start": {"streamSid": "MZforged", "callSid": "CAforged", "customParameters": {"token": "1.abc"}},
        }
        real_call = asyncio.create_task(
            rig.caller().run(
                [
                    WaitForAssistant(timeout_s=10),
                    Say(speech(900, seed=7)),
                    Silence(100),
                    WaitForAssistant(),
                    HangUp(),
                ]
            )
        )
        still_open = await _hostile_stream(rig.base_url, garbage)
        refused = await _hostile_stream(rig.base_url, [orjson.dumps(forged_start).decode()])
        result = await real_call
        assert rig.fake.violations == []
    assert still_open is None  # garbage is logged and ignored, the socket stays up
    assert refused is not None  # a start without a valid per-call token is closed at once
    assert len(rig.fake.sessions) == 1  # ... and never reaches OpenAI
    assert result.outcome == "completed" and result.violations == []
    texts = [e.text for e in rig.observer.ended[-1].transcript]
    assert texts == ["Hello there.", "Fine, thanks.", "Glad to hear it."]


async def _upgrade_status(base_url: str, headers: dict[str, str]) -> int:
    url = base_url.replace("http://", "ws://") + "/twilio/media"
    try:
        async with websockets.connect(url, additional_headers=headers):
            return 101
    except websockets.InvalidStatus as refused:
        return refused.response.status_code


async def test_media_upgrade_signatures_are_checked_and_can_be_required() -> None:
    good = RequestValidator(AUTH_TOKEN).compute_signature("wss://bot.example.test/twilio/media", {})
    async with running_rig() as rig:
        assert await _upgrade_status(rig.base_url, {"X-Twilio-Signature": "Zm9yZ2Vk"}) == 403
        assert await _upgrade_status(rig.base_url, {"X-Twilio-Signature": good}) == 101
        assert await _upgrade_status(rig.base_url, {}) == 101  # unsigned is allowed by default ...
    async with running_rig(require_stream_signature=True) as rig:
        assert await _upgrade_status(rig.base_url, {}) == 403  # ... unless required
        assert await _upgrade_status(rig.base_url, {"X-Twilio-Signature": good}) == 101
