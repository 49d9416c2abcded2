"""The Twilio REST adapter against the fake Twilio REST API, over real loopback HTTP."""

from __future__ import annotations

import socket

import pytest

from callbot.adapters.twilio_rest import TwilioRestCalls
from callbot.core.call_control import CallCreate, CallUpdate
from callbot.errors import CallGone, SettingsError, TwilioRestError
from callbot.testing.fake_twilio_rest import FakeCall, FakeTwilioRest
from callbot.testing.serving import serve_app

CALL = "CA" + "1" * 32


async def test_hang_up_reaches_twilio_as_status_completed_and_runs_the_hook() -> None:
    fake = FakeTwilioRest()
    fake.register_call(CALL)
    seen: list[tuple[str, CallUpdate]] = []

    async def on_update(call: FakeCall, update: CallUpdate) -> None:
        seen.append((call.sid, update))

    fake.on_update = on_update
    async with serve_app(fake.app) as url:
        calls = TwilioRestCalls(fake.account_sid, fake.auth_token, api_url=url)
        try:
            await calls.update_call(CALL, CallUpdate(status="completed"))
        finally:
            await calls.aclose()
    (request,) = fake.requests
    assert request.path == f"/2010-04-01/Accounts/{fake.account_sid}/Calls/{CALL}.json"
    assert request.field("Status") == "completed"
    assert fake.calls[CALL].status == "completed"
    assert seen == [(CALL, CallUpdate(status="completed"))]


async def test_new_twiml_is_sent_verbatim_and_a_finished_call_refuses_more() -> None:
    fake = FakeTwilioRest()
    fake.register_call(CALL)
    twiml = '<Response><Dial><Number url="https://x/whisper">+15551234567</Number></Dial></Response>'
    async with serve_app(fake.app) as url:
        calls = TwilioRestCalls(fake.account_sid, fake.auth_token, api_url=url)
        try:
            await calls.update_call(CALL, CallUpdate(twiml=twiml))
            await calls.update_call(CALL, CallUpdate(status="completed"))
            with pytest.raises(TwilioRestError) as refused:
                await calls.update_call(CALL, CallUpdate(status="completed"))
        finally:
            await calls.aclose()
    assert fake.updates_for(CALL) == [CallUpdate(twiml=twiml), CallUpdate(status="completed")]
    assert (refused.value.status, refused.value.code) == (400, 21220)
    assert not isinstance(refused.value, CallGone)


async def test_a_call_twilio_does_not_know_is_gone_and_bad_credentials_are_refused() -> None:
    fake = FakeTwilioRest()
    async with serve_app(fake.app) as url:
        calls = TwilioRestCalls(fake.account_sid, fake.auth_token, api_url=url)
        wrong = TwilioRestCalls(fake.account_sid, "not-the-token", api_url=url)
        try:
            with pytest.raises(CallGone) as gone:
                await calls.update_call(CALL, CallUpdate(status="completed"))
            fake.register_call(CALL)
            with pytest.raises(TwilioRestError) as denied:
                await wrong.update_call(CALL, CallUpdate(status="completed"))
        finally:
            await calls.aclose()
            await wrong.aclose()
    assert gone.value.code == 20404
    assert (denied.value.status, denied.value.code) == (401, 20003)
    assert fake.calls[CALL].status == "in-progress"


async def test_placing_a_call_sends_the_twiml_callbacks_and_asynchronous_amd() -> None:
    fake = FakeTwilioRest()
    placed: list[FakeCall] = []

    async def on_create(call: FakeCall) -> None:
        placed.append(call)

    fake.on_create = on_create
    request = CallCreate(
        to="+15551230000",
        from_="+15557650000",
        twiml='<Response><Connect><Stream url="wss://x/twilio/stream"/></Connect></Response>',
        status_callback="https://x/twilio/status",
        status_events=("initiated", "ringing", "answered", "completed"),
        machine_detection="DetectMessageEnd",
        amd_status_callback="https://x/twilio/amd",
        ring_timeout_s=25,
    )
    async with serve_app(fake.app) as url:
        calls = TwilioRestCalls(fake.account_sid, fake.auth_token, api_url=url)
        try:
            created = await calls.create_call(request)
        finally:
            await calls.aclose()
    assert created.call_sid.startswith("CA") and len(created.call_sid) == 34
    assert created.status == "queued"
    (sent,) = fake.requests
    assert sent.path.endswith("/Calls.json")
    assert (sent.field("To"), sent.field("From")) == (request.to, request.from_)
    assert sent.field("Twiml") == request.twiml
    assert sent.fields("StatusCallbackEvent") == ["initiated", "ringing", "answered", "completed"]
    assert (sent.field("MachineDetection"), sent.field("AsyncAmd")) == ("DetectMessageEnd", "true")
    assert sent.field("AsyncAmdStatusCallback") == "https://x/twilio/amd"
    assert sent.field("Timeout") == "25"
    assert [c.sid for c in placed] == [created.call_sid]


async def test_twilio_unreachable_is_a_twilio_rest_error_with_no_status() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    calls = TwilioRestCalls("AC" + "0" * 32, "token", api_url=f"http://127.0.0.1:{port}", timeout_s=2)
    try:
        with pytest.raises(TwilioRestError) as failed:
            await calls.update_call(CALL, CallUpdate(status="completed"))
    finally:
        await calls.aclose()
    assert failed.value.status == 0
    assert "unreachable" in str(failed.value)


def test_requests_that_twilio_would_refuse_are_refused_before_sending() -> None:
    with pytest.raises(SettingsError, match="TWILIO_ACCOUNT_SID"):
        TwilioRestCalls(None, "token")
    with pytest.raises(ValueError, match="exactly one"):
        CallUpdate()
    with pytest.raises(ValueError, match="exactly one"):
        CallUpdate(status="completed", twiml="<Response/>")
    with pytest.raises(ValueError, match="completed or canceled"):
        CallUpdate(status="in-progress")
    with pytest.raises(ValueError, match="machine_detection"):
        CallCreate(to="+1", from_="+2", twiml="<Response/>", machine_detection="Always")
