"""Outbound calls end to end: the real server places calls through the fake Twilio REST API, whose
dialer answers as a person, as a machine, or not at all, and posts signed status callbacks."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
from twilio.request_validator import RequestValidator

from callbot.cli_tickets import _describe
from callbot.core.cost import call_cost
from callbot.core.ticket import TicketStatus
from tests.e2e_helpers import AUTH_TOKEN, PUBLIC_URL
from tests.outbound_rig import ACCOUNT, FROM, VOICEMAIL, outbound_rig

HUMAN = "+15557770001"
MACHINE = "+15557770002"
BUSY = "+15557770003"
NO_ANSWER = "+15557770004"


async def test_a_person_answers_talks_and_gets_a_complete_ticket_with_the_context(tmp_path: Path) -> None:
    async with outbound_rig(tmp_path) as rig:
        context = {"order": "4417", "name": "Ada"}
        reply = await rig.place(
            HUMAN, instructions="Tell Ada her order 4417 ships tomorrow.", context=context
        )
        assert reply.status_code == 201, reply.text
        placed = reply.json()
        assert placed["call_sid"].startswith("CA") and isinstance(placed["ticket_id"], int)
        await rig.settle()
        view = await rig.ticket(placed["call_sid"])
        sessions = rig.fake.sessions

    assert view.id == placed["ticket_id"]
    assert view.status == TicketStatus.COMPLETE
    assert view.direction == "outbound"
    assert (view.item.from_number, view.item.to_number) == (FROM, HUMAN)
    assert view.context == context
    assert view.instructions == "Tell Ada her order 4417 ships tomorrow."
    assert view.lifecycle.twilio_status == "completed"
    assert view.lifecycle.duration_s is not None
    assert view.lifecycle.answered_by == "human"
    assert view.outcome == "talked"
    roles = [e.role for e in view.transcript]
    assert roles[:3] == ["assistant", "user", "assistant"]
    # the call's own instructions and context reached its Realtime session, and the agent opened with them
    (session,) = sessions
    update = next(e for e in session.received if e.get("type") == "session.update")
    instructions = update["session"]["instructions"]
    assert "outbound call" in instructions and "order 4417 ships tomorrow" in instructions
    assert json.dumps(context, sort_keys=True) in instructions
    greeting = next(e for e in session.received if e.get("type") == "response.create")
    assert "why you are calling" in greeting["response"]["instructions"]
    # what callbot asked Twilio for
    create = next(r for r in rig.rest.requests if r.path.endswith("/Calls.json"))
    assert create.field("MachineDetection") == "DetectMessageEnd" and create.field("AsyncAmd") == "true"
    assert create.field("StatusCallback") == PUBLIC_URL + "/twilio/status"
    assert set(create.fields("StatusCallbackEvent")) == {"initiated", "ringing", "answered", "completed"}


async def test_a_machine_gets_the_voicemail_after_the_beep_and_the_ticket_says_so(tmp_path: Path) -> None:
    async with outbound_rig(tmp_path, dialer_options={"answers": {MACHINE: "machine"}}) as rig:
        placed = (await rig.place(MACHINE, instructions="Remind about the appointment.")).json()
        await rig.settle()
        view = await rig.ticket(placed["call_sid"])
        found = (await rig.http.get("/api/tickets", params={"search": "voicemail_left"})).json()
    assert [item["id"] for item in found["items"]] == [placed["ticket_id"]]
    dialed = rig.dialer.dialed[placed["call_sid"]]
    assert dialed.voicemail == VOICEMAIL  # what the machine recorded
    assert dialed.hung_up_by_update
    assert view.lifecycle.answered_by == "machine_end_beep"
    assert view.lifecycle.voicemail_left
    assert view.outcome == "voicemail_left"
    assert view.lifecycle.twilio_status == "completed"
    shown = _describe(view, call_cost(view.to_record(), rig.settings.price_table))  # `callbot tickets show`
    assert "Lifecycle: outbound, Twilio completed" in shown
    assert "answered by machine_end_beep, outcome voicemail_left" in shown
    assert "Placed with: Remind about the appointment." in shown


async def test_a_machine_is_hung_up_on_when_the_policy_says_so(tmp_path: Path) -> None:
    async with outbound_rig(
        tmp_path, dialer_options={"answers": {MACHINE: "machine"}}, machine_policy="hangup"
    ) as rig:
        placed = (await rig.place(MACHINE)).json()
        await rig.settle()
        view = await rig.ticket(placed["call_sid"])
        create = next(r for r in rig.rest.requests if r.path.endswith("/Calls.json"))
        updates = rig.rest.updates_for(placed["call_sid"])
    assert create.field("MachineDetection") == "Enable"
    assert [u.status for u in updates] == ["completed"]
    assert view.lifecycle.answered_by == "machine_start"
    assert not view.lifecycle.voicemail_left
    assert view.outcome == "machine"


async def test_busy_and_no_answer_numbers_get_tickets_with_that_status(tmp_path: Path) -> None:
    answers = {BUSY: "busy", NO_ANSWER: "no-answer"}
    async with outbound_rig(tmp_path, dialer_options={"answers": answers}) as rig:
        busy = (await rig.place(BUSY)).json()
        unanswered = (await rig.place(NO_ANSWER)).json()
        await rig.settle()
        busy_view = await rig.ticket(busy["call_sid"])
        no_answer_view = await rig.ticket(unanswered["call_sid"])
        assert rig.fake.sessions == []  # nobody answered: no Realtime session was opened
        page = await rig.http.get(f"/tickets/{busy['ticket_id']}")
        api = (await rig.http.get(f"/api/tickets/{busy['ticket_id']}")).json()
    assert page.status_code == 200 and "+15557770003" in page.text
    assert '<dd id="call-outcome">busy</dd>' in page.text
    assert (api["outcome"], api["twilio_status"], api["direction"]) == ("busy", "busy", "outbound")
    for view, status in ((busy_view, "busy"), (no_answer_view, "no-answer")):
        assert view.lifecycle.twilio_status == status
        assert view.outcome == status
        assert view.lifecycle.duration_s == 0
        assert view.status == TicketStatus.COMPLETE  # nothing to summarise
        assert view.transcript == ()
        assert view.direction == "outbound"


async def test_an_inbound_call_that_never_streamed_gets_a_ticket_from_its_callback(tmp_path: Path) -> None:
    params = {
        "CallSid": "CA" + "9" * 32,
        "AccountSid": ACCOUNT,
        "From": "+15550009999",
        "To": FROM,
        "CallStatus": "canceled",
        "Direction": "inbound",
        "CallDuration": "0",
    }
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + "/twilio/status", params)
    async with outbound_rig(tmp_path) as rig, httpx.AsyncClient(base_url=rig.base_url) as http:
        bad = await http.post("/twilio/status", data=params, headers={"X-Twilio-Signature": "forged"})
        assert bad.status_code == 403
        missing = await http.post("/twilio/status", data=params)
        assert missing.status_code == 403
        for _ in range(2):  # a duplicate changes nothing
            ok = await http.post("/twilio/status", data=params, headers={"X-Twilio-Signature": signature})
            assert ok.status_code == 204
        view = await rig.ticket(params["CallSid"])
        listed = (await rig.http.get("/api/tickets")).json()
    assert view.direction == "inbound"
    assert (view.lifecycle.twilio_status, view.outcome) == ("canceled", "canceled")
    assert view.item.from_number == "+15550009999"
    assert listed["total"] == 1


async def test_bad_requests_place_no_call(tmp_path: Path) -> None:
    async with outbound_rig(tmp_path) as rig:
        not_e164 = await rig.place("555-1234")
        bad_context = await rig.place(HUMAN, context="[1, 2]")
        unauthenticated = await httpx.AsyncClient(base_url=rig.base_url).post(
            "/api/calls", json={"to": HUMAN}
        )
        placed = rig.rest.requests
    assert not_e164.status_code == 400 and "E.164" in not_e164.json()["error"]
    assert bad_context.status_code == 400 and "JSON object" in bad_context.json()["error"]
    assert unauthenticated.status_code == 401
    assert placed == []


async def test_bodies_python_cannot_read_and_unstorable_text_are_400s_that_place_no_call(
    tmp_path: Path,
) -> None:
    """Found by the call API fuzzer: a number of more than 4,300 digits and nesting deeper than the
    recursion limit were 500s, a NUL in the instructions a 503 after the call had been placed."""
    bodies = [
        b'{"to": ' + b"9" * 5000 + b"}",
        b'{"to": "+15551230001", "context": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
        b'{"to": "+15551230001", "instructions": "\\u0000"}',
        b'{"to": "+15551230001", "instructions": "\\ud800"}',
        b'{"to": "+15551230001", "context": {"k": "\\u0000"}}',
    ]
    async with outbound_rig(tmp_path) as rig:
        answers = [
            await rig.http.post("/api/calls", content=body, headers={"content-type": "application/json"})
            for body in bodies
        ]
        placed = rig.rest.requests
    assert [a.status_code for a in answers] == [400] * len(bodies), [a.text[:200] for a in answers]
    assert all(a.json()["error"] for a in answers)
    assert placed == []


async def test_a_server_without_twilio_credentials_says_which_are_missing(tmp_path: Path) -> None:
    async with outbound_rig(tmp_path, twilio_account_sid=None, outbound_from_number=None) as rig:
        reply = await rig.place(HUMAN)
        assert rig.rest.requests == []
    assert reply.status_code == 503
    assert "TWILIO_ACCOUNT_SID" in reply.json()["error"]
    assert "CALLBOT_OUTBOUND_FROM_NUMBER" in reply.json()["error"]


async def test_the_server_refuses_a_call_over_its_limit_of_live_and_placed_calls(tmp_path: Path) -> None:
    options = {"default_answer": "no-answer", "ring_s": 1.0}
    async with outbound_rig(tmp_path, dialer_options=options, max_concurrent_calls=2) as rig:
        first, second = await rig.place("+15557770011"), await rig.place("+15557770012")
        third = await rig.place("+15557770013")
        creates = [r for r in rig.rest.requests if r.path.endswith("/Calls.json")]
        await rig.settle()
        after = await rig.place("+15557770013")  # the ringing ones are over: there is room again
        await rig.settle()
    assert (first.status_code, second.status_code, third.status_code) == (201, 201, 429)
    assert "CALLBOT_MAX_CONCURRENT_CALLS is 2" in third.json()["error"]
    assert len(creates) == 2
    assert after.status_code == 201


async def test_a_stream_naming_a_placement_is_refused_unless_token_and_ticket_both_match(
    tmp_path: Path,
) -> None:
    import time

    from callbot.caller.simulator import HangUp, Silence, TwilioCaller
    from callbot.core import stream_token
    from callbot.core.call_lifecycle import placement_subject
    from callbot.web.calls import stream_twiml

    async with outbound_rig(tmp_path, dialer_options={"default_answer": "busy"}) as rig:
        placed = (await rig.place(BUSY, instructions="Secret plan.")).json()
        await rig.settle()
        now = int(time.time())
        genuine = "a" * 32
        cases = {
            # a token minted over the placement, but the call's ticket holds another placement
            placed["call_sid"]: stream_token.mint(AUTH_TOKEN.encode(), placement_subject(genuine), now, 60),
            # a token nobody minted
            "CA" + "7" * 32: f"{now + 60}.{'0' * 64}",
        }
        results = []
        for call_sid, token in cases.items():
            twiml = stream_twiml(rig.settings, "x", {"token": token, "placement": genuine, "to": HUMAN})
            caller = TwilioCaller(
                rig.base_url,
                auth_token=AUTH_TOKEN,
                call_sid=call_sid,
                public_base_url=PUBLIC_URL,
                max_call_s=10,
            )
            results.append(await caller.run_twiml(twiml, [Silence(4000), HangUp()]))
        sessions = list(rig.fake.sessions)
        view = await rig.ticket(placed["call_sid"])
    assert all(r.closed_by == "server" for r in results)
    assert sessions == []  # no Realtime session, so nothing of the call's instructions went anywhere
    assert view.transcript == () and view.outcome == "busy"


async def test_a_call_that_goes_on_after_its_stream_ended_is_recorded_as_transferred(tmp_path: Path) -> None:
    from callbot.caller.simulator import HangUp, Silence, TwilioCaller, WaitForAssistant

    async with outbound_rig(tmp_path) as rig:
        caller = TwilioCaller(rig.base_url, auth_token=AUTH_TOKEN, public_base_url=PUBLIC_URL)
        result = await caller.run([WaitForAssistant(timeout_s=10), Silence(200), HangUp()])
        await rig.settle()
        params = {
            "CallSid": result.call_sid,
            "AccountSid": ACCOUNT,
            "From": caller.from_number,
            "To": caller.to_number,
            "CallStatus": "completed",
            "Direction": "inbound",
            "CallDuration": "120",  # Twilio kept the call for two minutes after the stream's stop
        }
        signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + "/twilio/status", params)
        async with httpx.AsyncClient(base_url=rig.base_url) as http:
            ok = await http.post("/twilio/status", data=params, headers={"X-Twilio-Signature": signature})
        view = await rig.ticket(result.call_sid)
    assert ok.status_code == 204
    assert view.direction == "inbound"
    assert view.status == TicketStatus.COMPLETE and view.transcript  # the stream's own ticket
    assert (view.lifecycle.twilio_status, view.lifecycle.duration_s, view.outcome) == (
        "completed",
        120,
        "transferred",
    )


async def test_one_request_id_places_one_call_however_often_and_however_concurrently_it_is_sent(
    tmp_path: Path,
) -> None:
    async with outbound_rig(tmp_path, dialer_options={"default_answer": "busy"}) as rig:
        body = {"to": BUSY, "request_id": "row-7-0123456789abcdef"}
        # the first request is still with Twilio when the repeats arrive (a client cut off and retrying)
        first, second, third = await asyncio.gather(
            *(rig.http.post("/api/calls", json=body) for _ in range(3))
        )
        await rig.settle()
        later = await rig.http.post("/api/calls", json=body)  # after the call ended: still the same call
        bad = await rig.http.post("/api/calls", json={"to": BUSY, "request_id": "no spaces allowed"})
        refused = await rig.http.post(
            "/api/calls", json={"to": "5551234", "request_id": "row-8-fedcba9876543210"}
        )
        retried = await rig.http.post(
            "/api/calls", json={"to": NO_ANSWER, "request_id": "row-8-fedcba9876543210"}
        )
        await rig.settle()
        creates = [r for r in rig.rest.requests if r.path.endswith("/Calls.json")]
    answers = [r.json() for r in (first, second, third, later)]
    assert [r.status_code for r in (first, second, third, later)] == [201] * 4
    assert all(a == answers[0] for a in answers)
    assert bad.status_code == 400 and "request_id" in bad.json()["error"]
    # a refused request placed nothing, so the same id may place the corrected call
    assert refused.status_code == 400 and retried.status_code == 201
    assert [c.field("To") for c in creates] == [BUSY, NO_ANSWER]
