"""Whole calls with tools through the real server: the caller simulator, callbot on loopback, the
fake Realtime (scripted to call functions), an HTTP tool server and the fake Twilio REST API."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from twilio.request_validator import RequestValidator

from callbot.caller.simulator import HangUp, Say, SayDuringAssistant, Silence, TwilioCaller, WaitForAssistant
from callbot.core.call_control import CallUpdate
from callbot.core.record import CallRecord
from callbot.errors import ToolsFileError
from callbot.testing.fake_realtime import Script
from callbot.testing.fake_realtime_state import ScriptedCall
from callbot.testing.fake_tool_server import FakeToolServer, tools_yaml
from callbot.testing.fake_twilio_rest import FakeCall, FakeTwilioRest
from callbot.testing.serving import serve_app
from callbot.web.services import open_services
from tests.e2e_helpers import AUTH_TOKEN, PUBLIC_URL, Rig, make_settings, running_rig, speech

TRANSFER_TO = "+15557654321"
ORDER_LINE = "Where is my order 4417?"


@dataclass
class ToolRig:
    rig: Rig
    twilio: FakeTwilioRest
    tools: FakeToolServer
    caller: TwilioCaller
    at_update: list[dict[str, Any]] = field(default_factory=list)
    """What the caller's phone had played and echoed when each REST update reached Twilio."""

    def record(self) -> CallRecord:
        (record,) = self.rig.observer.ended
        return record


@contextlib.asynccontextmanager
async def tool_rig(
    script: Script,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    timeout_s: float = 5.0,
    **settings: Any,
) -> AsyncIterator[ToolRig]:
    monkeypatch.setenv("ORDERS_API_TOKEN", "orders-secret-token")
    tools = FakeToolServer()
    twilio = FakeTwilioRest(auth_token=AUTH_TOKEN)
    async with serve_app(tools.app) as tools_url, serve_app(twilio.app) as twilio_url:
        tools_file = tmp_path / "tools.yaml"
        tools_file.write_text(tools_yaml(tools_url, timeout_s=timeout_s))
        overrides: dict[str, Any] = {
            "tools_file": tools_file,
            "transfer_to": TRANSFER_TO,
            "twilio_account_sid": twilio.account_sid,
            "twilio_api_url": twilio_url,
            **settings,
        }
        async with running_rig(script, **overrides) as rig:
            caller = rig.caller()
            twilio.register_call(caller.call_sid, from_=caller.from_number, to=caller.to_number)
            tool_rig = ToolRig(rig, twilio, tools, caller)

            async def on_update(call: FakeCall, update: CallUpdate) -> None:
                stream = caller.stream
                assert stream is not None
                tool_rig.at_update.append(
                    {
                        "marks_received": [name for name, _ in stream.result.marks_received],
                        "marks_echoed": [(name, status) for name, _, status in stream.result.marks_echoed],
                        "playback_empty": stream.playback.empty,
                        "clears": len(stream.result.clears),
                    }
                )
                caller.twilio_ends("completed" if update.status == "completed" else "redirected")

            twilio.on_update = on_update
            yield tool_rig


def order_then_transfer_script(**kwargs: Any) -> Script:
    return Script(
        greeting="Hello, Acme support.",
        user_transcripts=[ORDER_LINE, "Thanks. Can I talk to a person about it?"],
        function_calls={
            0: ScriptedCall("lookup_order", {"order_number": "4417"}, say="Let me look that up."),
            1: ScriptedCall(
                "transfer_to_human",
                {"reason": "wants a person about the late order 4417"},
                say="Sure, I am putting you through to a colleague now.",
            ),
        },
        after_tool="Here is what I found: {output}",
        **kwargs,
    )


async def test_order_status_is_read_back_then_the_caller_is_transferred_with_a_brief(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The issue's "done when": an HTTP tool answers and is read back, then a transfer."""
    async with tool_rig(order_then_transfer_script(), tmp_path, monkeypatch) as t:
        result = await t.caller.run(
            [
                WaitForAssistant(timeout_s=10),
                Say(speech(1200, seed=1)),
                Silence(100),
                WaitForAssistant(timeout_s=30, quiet_ms=2500),  # "let me look" and the long read-back
                Say(speech(1000, seed=2)),
                Silence(100),
                Silence(15_000),  # Twilio ends the stream long before this runs out
                HangUp(),
            ]
        )
        whisper_url = _dial_url(t.twilio.requests[-1].field("Twiml") or "")
        whisper = await _twilio_asks_for(t.rig.base_url, whisper_url)
        assert t.rig.fake.violations == []
    assert result.violations == []
    # the HTTP tool got the model's arguments and the token from the environment
    (request,) = t.tools.requests
    assert request.body == {"order_number": "4417"}
    assert request.headers["authorization"] == "Bearer orders-secret-token"
    record = t.record()
    lookup, transfer = record.tool_calls
    assert (lookup.name, lookup.kind, lookup.outcome) == ("lookup_order", "http", "ok")
    assert json.loads(lookup.output or "") == {
        "order_number": "4417",
        "found": True,
        "status": "shipped",
        "carrier": "DHL",
        "tracking": "JD0146000038",
        "eta": "Friday",
    }
    assert json.loads(lookup.arguments) == {"order_number": "4417"}
    assert lookup.duration_ms is not None and lookup.duration_ms >= 0
    # the agent read the answer back
    said = [e.text or "" for e in record.transcript if e.role == "assistant"]
    assert any(s.startswith("Here is what I found:") and "shipped" in s and "Friday" in s for s in said)
    # the transfer: one REST update with <Dial> to the target, whose whisper is the brief
    (update,) = t.twilio.updates_for(t.caller.call_sid)
    assert update.twiml is not None and update.status is None
    assert f">{TRANSFER_TO}</Number></Dial></Response>" in update.twiml
    assert whisper_url.startswith(PUBLIC_URL + "/twilio/whisper/")
    assert whisper.startswith("<Response><Say>Transferred call from +15551230000.")
    assert "late order 4417" in whisper and ORDER_LINE in whisper
    # what the caller had heard when the redirect went out: everything, no clear
    (seen,) = t.at_update
    assert seen["playback_empty"] and seen["clears"] == 0
    assert [name for name, _ in seen["marks_echoed"]] == seen["marks_received"]
    # the stop that followed was expected: the ticket says transferred, not hung up
    assert result.twilio_ended == "redirected"
    assert record.end_reason == (
        f"transferred to a human ({TRANSFER_TO}): wants a person about the late order 4417"
    )
    assert (transfer.name, transfer.kind, transfer.outcome) == ("transfer_to_human", "builtin", "ok")
    assert t.twilio.calls[t.caller.call_sid].status == "in-progress"  # transferred, not hung up


async def test_goodbye_then_end_call_hangs_up_only_after_the_goodbye_played(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = Script(
        greeting="Hello, Acme support.",
        user_transcripts=["That was all, thank you, goodbye."],
        function_calls={
            0: ScriptedCall(
                "end_call",
                {"reason": "the caller said goodbye"},
                say="You are welcome. Goodbye, and have a nice day!",
            )
        },
    )
    async with tool_rig(script, tmp_path, monkeypatch) as t:
        result = await t.caller.run(
            [WaitForAssistant(timeout_s=10), Say(speech(1200, seed=3)), Silence(15_000), HangUp()]
        )
        assert t.rig.fake.violations == []
    assert result.violations == []
    (update,) = t.twilio.updates_for(t.caller.call_sid)
    assert update == CallUpdate(status="completed")
    assert t.twilio.calls[t.caller.call_sid].status == "completed"
    # REST completed only once Twilio had echoed every mark: the whole goodbye played, no clear
    (seen,) = t.at_update
    assert seen["playback_empty"] and seen["clears"] == 0
    assert seen["marks_received"] and [n for n, _ in seen["marks_echoed"]] == seen["marks_received"]
    assert all(status == "played" for _, status in seen["marks_echoed"])
    record = t.record()
    assert record.end_reason == "agent ended the call: the caller said goodbye"
    assert result.twilio_ended == "completed"
    goodbye = [e for e in record.transcript if e.role == "assistant"][-1]
    assert goodbye.text == "You are welcome. Goodbye, and have a nice day!" and not goodbye.interrupted
    (end_call,) = record.tool_calls
    assert (end_call.name, end_call.outcome, end_call.output) == ("end_call", "ok", "the call was ended")


async def test_a_function_call_in_a_barge_in_cancelled_response_is_never_executed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hardest case: the cancelled response's call item even says `completed`."""
    script = Script(
        greeting="Hello, Acme support.",
        user_transcripts=["I think that is all.", "Wait, no, one more thing!"],
        function_calls={
            0: ScriptedCall(
                "end_call",
                {"reason": "done"},
                say="Alright then, thank you so much for calling Acme support today, it was a real "
                "pleasure to help you, and I wish you a wonderful rest of your week. Goodbye!",
            )
        },
        replies=["", "Of course, what else can I do for you?"],
        cancelled_calls_complete=True,
    )
    async with tool_rig(script, tmp_path, monkeypatch) as t:
        result = await t.caller.run(
            [
                WaitForAssistant(timeout_s=10),
                Say(speech(1000, seed=4)),
                SayDuringAssistant(speech(900, seed=5), after_ms=600),
                Silence(100),
                WaitForAssistant(timeout_s=10),
                HangUp(),
            ]
        )
        cancelled = [
            e["response"]
            for s in t.rig.fake.sessions
            for e in s.sent
            if e["type"] == "response.done" and e["response"]["status"] == "cancelled"
        ]
        assert t.rig.fake.violations == []
    assert cancelled and cancelled[0]["output"][-1]["type"] == "function_call"
    assert cancelled[0]["output"][-1]["status"] == "completed"  # the trap
    assert t.twilio.updates_for(t.caller.call_sid) == []  # never hung up
    assert result.twilio_ended is None and result.closed_by == "caller"
    record = t.record()
    assert record.end_reason == "caller hung up"
    (skipped,) = record.tool_calls
    assert (skipped.name, skipped.outcome) == ("end_call", "skipped")
    assert skipped.error is not None and "cancelled" in skipped.error
    assert any(e.text == "Of course, what else can I do for you?" for e in record.transcript)


@pytest.mark.parametrize(
    ("misbehave", "outcome", "error_part"),
    [
        ({"fail_status": 503}, "error", "HTTP 503"),
        ({"bad_json": True}, "error", "not JSON"),
        ({"delay_s": 3.0}, "timeout", "no answer within 0.8 s"),
    ],
    ids=["http-error", "bad-json", "timeout"],
)
async def test_a_failing_tool_gives_the_model_an_error_and_the_call_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, misbehave: dict[str, Any], outcome: str, error_part: str
) -> None:
    script = Script(
        greeting="Hello, Acme support.",
        user_transcripts=[ORDER_LINE, "Okay, thanks."],
        function_calls={0: ScriptedCall("lookup_order", {"order_number": "4417"}, say="Let me check.")},
        after_tool="Sorry, I could not look that up: {output}",
        replies=["", "You are welcome."],
    )
    async with tool_rig(script, tmp_path, monkeypatch, timeout_s=0.8) as t:
        for name, value in misbehave.items():
            setattr(t.tools, name, value)
        result = await t.caller.run(
            [
                WaitForAssistant(timeout_s=10),
                Say(speech(1000, seed=6)),
                Silence(100),
                WaitForAssistant(timeout_s=30, quiet_ms=2000),
                Say(speech(800, seed=7)),
                Silence(100),
                WaitForAssistant(timeout_s=10),
                HangUp(),
            ]
        )
        assert t.rig.fake.violations == []
    assert result.outcome == "completed" and result.violations == []
    record = t.record()
    (call,) = record.tool_calls
    assert call.outcome == outcome and call.error is not None and error_part in call.error
    said = [e.text or "" for e in record.transcript if e.role == "assistant"]
    assert any(s.startswith("Sorry, I could not look that up:") and error_part in s for s in said)
    assert said[-1] == "You are welcome."  # the call went on
    assert record.end_reason == "caller hung up"


async def test_a_slow_tool_blocks_nothing_and_its_answer_waits_for_the_caller(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tool takes 1.5 s; the caller talks meanwhile (their audio still reaches the model).
    The answer lands while they speak: its output goes in at once, and the response their turn
    makes reads it back; callbot never sends a colliding `response.create`."""
    script = Script(
        greeting="Hello, Acme support.",
        user_transcripts=[ORDER_LINE, "And please hurry, I need it for the weekend, really."],
        function_calls={0: ScriptedCall("lookup_order", {"order_number": "4417"}, say="One moment.")},
        after_tool="Found it: {output}",
    )
    async with tool_rig(script, tmp_path, monkeypatch) as t:
        t.tools.delay_s = 1.5
        result = await t.caller.run(
            [
                WaitForAssistant(timeout_s=10),
                Say(speech(1000, seed=8)),
                Silence(100),
                WaitForAssistant(timeout_s=10, quiet_ms=100),  # "One moment."
                Say(speech(3000, seed=9)),
                Silence(100),
                WaitForAssistant(timeout_s=30),
                HangUp(),
            ]
        )
        (session,) = t.rig.fake.sessions
        everything = [e["type"] for e in session.received]
        received = [e for e in session.received if e["type"] != "input_audio_buffer.append"]
        errors = [e for e in session.sent if e["type"] == "error"]
        assert t.rig.fake.violations == []
    assert errors == []
    output_at = next(
        i for i, e in enumerate(received) if e["type"] == "conversation.item.create"
        and e["item"]["type"] == "function_call_output"
    )  # fmt: skip
    assert not [e for e in received[output_at:] if e["type"] == "response.create"]  # the VAD's answered it
    # the answer came in the middle of the caller's speech, whose audio flowed on either side of it
    at = everything.index("conversation.item.create", everything.index("response.create") + 1)
    assert everything[at - 3 : at] == ["input_audio_buffer.append"] * 3
    assert everything[at + 1 : at + 4] == ["input_audio_buffer.append"] * 3
    record = t.record()
    said = [e.text or "" for e in record.transcript if e.role == "assistant"]
    assert sum(s.startswith("Found it:") and "shipped" in s for s in said) == 1
    (call,) = record.tool_calls
    assert call.outcome == "ok" and call.duration_ms is not None and call.duration_ms >= 1400
    assert result.late_frames <= result.frames_played // 20


async def test_a_slow_tool_in_one_call_holds_up_no_other_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Call A's tool is held unanswered; call B, on the same server meanwhile, is greeted and ends
    with its ticket record. Only then is A's tool let go, and A's turn finishes with the answer.
    The order is read from events (the tool server's counts, the order records end), not a clock."""
    script = Script(
        greeting="Hello, Acme support.",
        user_transcripts=[ORDER_LINE],
        function_calls={0: ScriptedCall("lookup_order", {"order_number": "4417"}, say="One moment.")},
        after_tool="Found it: {output}",
    )
    async with tool_rig(script, tmp_path, monkeypatch) as t:
        hold = t.tools.hold = asyncio.Event()
        first = asyncio.create_task(
            t.caller.run(
                [
                    WaitForAssistant(timeout_s=10),
                    Say(speech(1000, seed=8)),
                    Silence(100),
                    WaitForAssistant(timeout_s=10, quiet_ms=100),  # "One moment."
                    WaitForAssistant(timeout_s=60),  # the read-back, once the tool answers
                    HangUp(),
                ]
            )
        )
        async with asyncio.timeout(30):
            while not t.tools.requests:  # A's tool call has reached the tool server
                await asyncio.sleep(0.02)
        other = t.rig.caller()
        second = await other.run([WaitForAssistant(timeout_s=10), HangUp()])
        async with asyncio.timeout(10):
            while not t.rig.observer.ended:
                await asyncio.sleep(0.02)
        answered_during_b = t.tools.answered
        a_done_during_b = first.done()
        hold.set()
        result = await first
        async with asyncio.timeout(10):
            while len(t.rig.observer.ended) < 2:
                await asyncio.sleep(0.02)
        assert t.rig.fake.violations == []
    assert answered_during_b == 0 and not a_done_during_b  # A's tool was in flight all through B
    assert second.violations == [] and result.violations == []
    b_record, a_record = t.rig.observer.ended  # B's call ended first
    assert b_record.info.call_sid == other.call_sid and a_record.info.call_sid == t.caller.call_sid
    assert [e.text for e in b_record.transcript if e.role == "assistant"] == ["Hello, Acme support."]
    assert b_record.end_reason == "caller hung up" and b_record.tool_calls == ()
    (call,) = a_record.tool_calls
    assert call.outcome == "ok" and "shipped" in (call.output or "")
    said = [e.text or "" for e in a_record.transcript if e.role == "assistant"]
    assert any(s.startswith("Found it:") and "shipped" in s for s in said)


async def test_a_caller_hanging_up_mid_tool_loses_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = Script(
        greeting="Hello, Acme support.",
        user_transcripts=[ORDER_LINE],
        function_calls={0: ScriptedCall("lookup_order", {"order_number": "4417"}, say="One moment.")},
    )
    async with tool_rig(script, tmp_path, monkeypatch) as t:
        t.tools.delay_s = 1.0
        await t.caller.run(
            [
                WaitForAssistant(timeout_s=10),
                Say(speech(1000, seed=10)),
                Silence(100),
                WaitForAssistant(quiet_ms=100),
                HangUp(),
            ]
        )
        assert t.rig.fake.violations == []
    assert t.tools.answered == 1
    record = t.record()
    assert record.end_reason == "caller hung up"
    (call,) = record.tool_calls
    assert call.outcome == "ok" and "shipped" in (call.output or "")
    assert call.ended_ms is not None


async def test_a_bad_tools_file_stops_the_server_naming_the_entry(tmp_path: Path) -> None:
    from callbot.errors import ToolsFileError
    from callbot.web.services import open_services
    from tests.e2e_helpers import make_settings

    bad = tmp_path / "tools.yaml"
    bad.write_text(tools_yaml("http://127.0.0.1:9", token_var="NOT_SET_ANYWHERE_1234"))
    settings = make_settings(tools_file=bad)
    with pytest.raises(ToolsFileError) as refused:
        async with open_services(settings, connector=object(), observer=object()):  # type: ignore[arg-type]
            pass
    assert str(refused.value) == (
        f"CALLBOT_TOOLS_FILE {bad}: tools entry 'lookup_order': header 'Authorization' names the "
        "environment variable NOT_SET_ANYWHERE_1234, which is not set"
    )


def _dial_url(twiml: str) -> str:
    start = twiml.index('url="') + len('url="')
    return twiml[start : twiml.index('"', start)].replace("&amp;", "&")


async def _twilio_asks_for(base_url: str, public_url: str) -> str:
    """Twilio fetching the whisper for the answering leg: a signed POST to the public URL."""
    params = {"CallSid": "CA" + "7" * 32, "AccountSid": "AC" + "0" * 32, "CallStatus": "in-progress"}
    signature = RequestValidator(AUTH_TOKEN).compute_signature(public_url, params)
    local = base_url + public_url[len(PUBLIC_URL) :]
    async with httpx.AsyncClient(trust_env=False) as client:
        answer = await client.post(local, data=params, headers={"X-Twilio-Signature": signature})
        refused = await client.post(local, data=params, headers={"X-Twilio-Signature": "forged"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/xml")
    assert refused.status_code == 403
    return answer.text


async def test_without_twilio_credentials_the_call_control_tools_are_not_offered() -> None:
    settings = make_settings(transfer_to=TRANSFER_TO)  # no TWILIO_ACCOUNT_SID
    async with open_services(settings, connector=object(), observer=object()) as services:  # type: ignore[arg-type]
        assert services.call_control is None
        assert not services.tools.end_call and services.tools.transfer_to is None
    with_sid = make_settings(transfer_to=TRANSFER_TO, twilio_account_sid="AC" + "1" * 32)
    async with open_services(with_sid, connector=object(), observer=object()) as services:  # type: ignore[arg-type]
        assert services.call_control is not None
        assert services.tools.end_call and services.tools.transfer_to == TRANSFER_TO
    with pytest.raises(ToolsFileError, match="CALLBOT_TRANSFER_TO must be"):
        async with open_services(make_settings(transfer_to="desk"), connector=object(), observer=object()):  # type: ignore[arg-type]
            pass


def test_a_json_tools_file_loads_as_the_yaml_one_and_a_bad_entry_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import yaml

    from callbot import compose
    from callbot.errors import ToolsFileError
    from tests.e2e_helpers import make_settings

    monkeypatch.setenv("ORDERS_API_TOKEN", "s3cret-json")
    document = yaml.safe_load(tools_yaml("http://127.0.0.1:9", timeout_s=2.5))
    as_yaml = tmp_path / "tools.yaml"
    as_yaml.write_text(tools_yaml("http://127.0.0.1:9", timeout_s=2.5))
    as_json = tmp_path / "tools.json"
    as_json.write_text(json.dumps(document))
    from_json = compose.load_tools(make_settings(tools_file=as_json))
    assert from_json == compose.load_tools(make_settings(tools_file=as_yaml))
    (tool,) = from_json.http
    assert tool.name == "lookup_order" and tool.timeout_s == 2.5
    assert dict(tool.headers) == {"Authorization": "Bearer s3cret-json"}

    second = dict(document["tools"][0], name="cancel_order", url="ftp://example.com/cancel")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tools": [document["tools"][0], second]}))
    with pytest.raises(ToolsFileError) as refused:
        compose.load_tools(make_settings(tools_file=bad))
    message = str(refused.value)
    assert message.startswith(f"CALLBOT_TOOLS_FILE {bad}: tools entry 'cancel_order': ")
    assert "url" in message

    broken = tmp_path / "broken.json"
    broken.write_text('{"tools": [')
    with pytest.raises(ToolsFileError, match="not valid YAML or JSON"):
        compose.load_tools(make_settings(tools_file=broken))


async def test_a_transfer_ticket_is_transferred_and_the_tool_header_secret_is_never_stored_served_or_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The same call as the transfer test, through the real ticket service (database, ticket
    model, JSON API): the ticket's status is `transferred`, and the value the tool's
    `Authorization` header takes from ORDERS_API_TOKEN appears in no ticket, answer or log line."""
    import logging

    from tests.test_e2e_ticket import read_ticket, ticket_rig

    secret = "orders-secret-token-5b7f"
    monkeypatch.setenv("ORDERS_API_TOKEN", secret)
    caplog.set_level(logging.DEBUG)
    tools = FakeToolServer()
    twilio = FakeTwilioRest(auth_token=AUTH_TOKEN)
    async with serve_app(tools.app) as tools_url, serve_app(twilio.app) as twilio_url:
        tools_file = tmp_path / "tools.yaml"
        tools_file.write_text(tools_yaml(tools_url))
        overrides: dict[str, Any] = {
            "tools_file": tools_file,
            "transfer_to": TRANSFER_TO,
            "twilio_account_sid": twilio.account_sid,
            "twilio_api_url": twilio_url,
            "admin_password": "review-pw",
        }
        async with ticket_rig(tmp_path, order_then_transfer_script(), **overrides) as rig:
            caller = rig.caller()
            twilio.register_call(caller.call_sid, from_=caller.from_number, to=caller.to_number)

            async def on_update(call: FakeCall, update: CallUpdate) -> None:
                caller.twilio_ends("completed" if update.status == "completed" else "redirected")

            twilio.on_update = on_update
            result = await caller.run(
                [
                    WaitForAssistant(timeout_s=10),
                    Say(speech(1200, seed=1)),
                    Silence(100),
                    WaitForAssistant(timeout_s=30, quiet_ms=2500),
                    Say(speech(1000, seed=2)),
                    Silence(100),
                    Silence(15_000),
                    HangUp(),
                ]
            )
            await rig.settle()
            view = await read_ticket(rig.settings.database_url, caller.call_sid)
            assert view is not None
            async with httpx.AsyncClient(base_url=rig.base_url, trust_env=False) as http:
                api = await http.get(f"/api/tickets/{view.id}", auth=("admin", "review-pw"))
                listed = await http.get("/api/tickets", auth=("admin", "review-pw"))
    assert result.twilio_ended == "redirected"
    (request,) = tools.requests
    assert request.headers["authorization"] == f"Bearer {secret}"  # the tool did get it
    assert view.status == "transferred"
    assert api.status_code == 200 and api.json()["status"] == "transferred"
    assert [call["name"] for call in api.json()["tool_calls"]] == ["lookup_order", "transfer_to_human"]
    assert secret not in json.dumps(view.to_json())
    assert secret not in api.text and secret not in listed.text
    assert "ORDERS_API_TOKEN" not in api.text  # not even the variable's name
    logged = {r.name for r in caplog.records}
    assert "callbot.bridge" in logged, logged  # the call's own log lines were captured
    assert secret not in caplog.text
    assert all(secret not in str(r.args) for r in caplog.records)
