"""A whole call on the fast paths and on the public paths they fall back to: same call, same ticket."""

from __future__ import annotations

import logging

import httpx
import pytest

from callbot.caller.simulator import HangUp, Say, Silence, WaitForAssistant
from tests.e2e_helpers import running_rig, speech
from tests.test_e2e_call import TWO_TURNS


@pytest.mark.parametrize("fast", [True, False], ids=["fast-paths", "public-paths"])
async def test_a_call_is_the_same_on_the_fast_and_the_public_paths(
    fast: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="callbot.web")
    caplog.set_level(logging.DEBUG, logger="callbot.realtime")  # last: the handler takes this level
    async with running_rig(TWO_TURNS, fast_paths=fast) as rig:
        async with httpx.AsyncClient(base_url=rig.base_url) as http:
            health = (await http.get("/healthz")).json()
            metrics = (await http.get("/metrics")).text
        result = await rig.caller().run(
            [
                WaitForAssistant(timeout_s=10),
                Say(speech(1200, seed=1)),
                Silence(100),
                WaitForAssistant(timeout_s=10),
                HangUp(),
            ]
        )
        assert rig.fake.violations == []
    assert {name: detail["active"] for name, detail in health["fast_paths"].items()} == {
        "twilio_channel": fast,
        "realtime_frames": fast,
        "sigterm_drain": fast,
    }
    assert f'callbot_fast_path{{path="twilio_channel"}} {1.0 if fast else 0.0}' in metrics
    # The paths under test were really taken, on both sides of the call.
    twilio_side = "direct text channel" if fast else "ASGI messages"
    assert f"media websocket accepted ({twilio_side})" in caplog.messages
    realtime_side = (
        "frames written and read directly" if fast else "through the SDK's send_raw and recv_bytes"
    )
    assert f"Realtime session open: {realtime_side}" in caplog.messages
    assert result.outcome == "completed", result.summary()
    record = rig.observer.ended[0]
    assert [(e.role, e.text) for e in record.transcript] == [
        ("assistant", "Hello, thanks for calling Acme support."),
        ("user", "My order 4417 has not arrived."),
        ("assistant", "Sorry to hear that. Shall I send a replacement?"),
    ]
    assert record.end_reason == "caller hung up"
