"""An inbound call's ticket is written when its webhook is answered, before the media stream:
a replica killed in between still leaves the call behind (README "Reliability").

The store on SQLite and PostgreSQL (the `database_url` fixture of tests/test_store.py), then the
real server: the webhook's ticket, the stream taking it over, a call that never streamed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from twilio.request_validator import RequestValidator

from callbot.adapters.spool import Spool
from callbot.adapters.store_sql import SqlTicketStore
from callbot.caller.simulator import HangUp, Say, TwilioCaller, WaitForAssistant
from callbot.core.call_lifecycle import NO_MEDIA_STREAM, PlacedCall, arrival_info, streamless_after_s
from callbot.core.leases import REPLICA_LOST, LeasePolicy, LeaseState
from callbot.core.record import CallInfo
from callbot.core.ticket import TicketStatus
from callbot.core.ticket_views import TicketFilters
from callbot.testing.fake_openai_http import FakeOpenAIControl
from callbot.ticketing import TicketService
from tests.e2e_helpers import AUTH_TOKEN, PUBLIC_URL, fake_ticket_model, speech
from tests.outbound_rig import outbound_rig
from tests.test_replica_leases import migrated
from tests.test_store import BASE, database_url, make_record

__all__ = ["database_url", "migrated"]  # the fixtures, re-used

CALLER = "+15550100"


def arriving(sid: str, number: str = CALLER) -> CallInfo:
    info = arrival_info({"CallSid": sid, "From": number, "To": "+15550199", "AccountSid": "AC1"})
    assert info is not None
    return info


# ----- the core: what a webhook's form gives -----


def test_a_webhook_form_gives_the_inbound_call_or_none_for_a_sid_no_ticket_can_be_keyed_on() -> None:
    info = arriving("CA" + "1" * 32)
    assert (info.call_sid, info.stream_sid, info.from_number, info.direction) == (
        "CA" + "1" * 32,
        "",
        CALLER,
        "inbound",
    )
    for bad in ("", "CA 1", "CA-1", "C" * 65, "CA\x00", "CAé"):
        assert arrival_info({"CallSid": bad}) is None
    assert streamless_after_s(120) == 150


# ----- the store -----


async def test_the_arrival_ticket_is_written_once_and_the_stream_takes_it_over(migrated: str) -> None:
    webhook_side = await SqlTicketStore.open(migrated, replica_id="a")
    stream_side = await SqlTicketStore.open(migrated, replica_id="b")
    try:
        first = await webhook_side.record_arrival(arriving("CAarr1"), BASE)
        assert await webhook_side.record_arrival(arriving("CAarr1"), BASE + timedelta(seconds=5)) == first
        view = await webhook_side.get(first)
        assert view is not None
        assert (view.status, view.stream_sid, view.item.from_number) == (TicketStatus.IN_PROGRESS, "", CALLER)
        assert view.item.started_at == BASE  # the second webhook changed nothing
        # The stream's first save (on the other replica) lands on the same ticket.
        assert (
            await stream_side.upsert_call(make_record("CAarr1", ended=False), TicketStatus.IN_PROGRESS)
            == first
        )
        # A webhook retried after the stream began changes nothing either.
        assert await webhook_side.record_arrival(arriving("CAarr1"), BASE) == first
        view = await stream_side.get(first)
        assert view is not None and view.stream_sid == "MZCAarr1" and len(view.transcript) == 1
        assert (await stream_side.list(TicketFilters(), 1, 10)).total == 1
    finally:
        await webhook_side.close()
        await stream_side.close()


async def test_only_inbound_tickets_that_never_streamed_are_finished_once_their_token_ran_out(
    migrated: str,
) -> None:
    store = await SqlTicketStore.open(migrated)
    try:
        old, young = BASE, BASE + timedelta(minutes=10)
        never = await store.record_arrival(arriving("CAnever"), old)
        recent = await store.record_arrival(arriving("CArecent"), young)
        await store.record_arrival(arriving("CAstreamed"), old)
        streamed = await store.upsert_call(make_record("CAstreamed", ended=False), TicketStatus.IN_PROGRESS)
        out = CallInfo("CAout", "", "AC1", "+15550199", CALLER, direction="outbound")
        outbound = await store.create_placed_call(out, PlacedCall("p1", None, None), old)

        cutoff = old + timedelta(minutes=5)
        assert await store.finish_streamless(started_before=cutoff) == [never]
        assert await store.finish_streamless(started_before=cutoff) == []  # once
        done = await store.get(never)
        assert done is not None
        assert (done.status, done.end_reason, done.item.title, done.item.summary) == (
            TicketStatus.COMPLETE,
            NO_MEDIA_STREAM,
            "Inbound call: no media stream",
            None,
        )
        for left in (recent, streamed, outbound):
            view = await store.get(left)
            assert view is not None and view.status == TicketStatus.IN_PROGRESS
        # Nothing was said on it: caller memory has nothing to recall from it.
        assert await store.earlier_calls(CALLER, BASE - timedelta(days=1), 10) == []
    finally:
        await store.close()


async def test_a_dead_replicas_call_that_never_streamed_is_finished_without_the_ticket_model(
    migrated: str, tmp_path: Path
) -> None:
    control = FakeOpenAIControl()
    policy = LeasePolicy(lease_ms=30_000, heartbeat_ms=10_000)
    async with fake_ticket_model(control) as summariser:
        a_store, b_store = [await SqlTicketStore.open(migrated, replica_id=name) for name in ("a", "b")]
        b = TicketService(b_store, summariser, Spool(tmp_path / "spool-b"), timeout_s=5.0)
        try:
            t0 = int(datetime.now(UTC).timestamp() * 1000)
            state = LeaseState(policy)
            await a_store.renew_lease("a", datetime.fromtimestamp(t0 / 1000, UTC))
            assert await b.lease_pass(b_store, "b", state, t0) == 0
            # A answered the webhook, then was SIGKILLed before the stream's first save.
            ticket_id = await a_store.record_arrival(arriving("CAgone"), datetime.now(UTC))
            for t in (t0 + 10_000, t0 + 20_000, t0 + 30_000):
                assert await b.lease_pass(b_store, "b", state, t) == 0
            assert await b.lease_pass(b_store, "b", state, t0 + 40_000) == 1
            await b.drain()
            view = await b_store.get(ticket_id)
            assert view is not None
            assert (view.status, view.end_reason, view.item.summary) == (
                TicketStatus.COMPLETE,
                REPLICA_LOST,
                None,
            )
            assert control.requests == []  # no summary asked for a call nobody spoke on
        finally:
            await b.aclose()
            await a_store.close()
            await b_store.close()


# ----- the real server -----


def signed(caller: TwilioCaller) -> tuple[dict[str, str], dict[str, str]]:
    params = caller.webhook_params()
    signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + "/twilio/voice", params)
    return params, {"X-Twilio-Signature": signature}


async def test_the_webhook_writes_the_ticket_and_the_call_keeps_it_to_the_end(tmp_path: Path) -> None:
    async with outbound_rig(tmp_path) as rig:
        sid = "CA" + "7" * 32
        caller = TwilioCaller(rig.base_url, auth_token=AUTH_TOKEN, public_base_url=PUBLIC_URL, call_sid=sid)
        params, headers = signed(caller)
        async with httpx.AsyncClient(base_url=rig.base_url, trust_env=False) as http:
            answer = await http.post("/twilio/voice", data=params, headers=headers)
        assert answer.status_code == 200 and "<Stream" in answer.text
        before = await rig.ticket(sid)
        assert (before.status, before.stream_sid, before.direction) == (
            TicketStatus.IN_PROGRESS,
            "",
            "inbound",
        )

        result = await caller.run(
            [WaitForAssistant(timeout_s=15), Say(speech(800, 1)), WaitForAssistant(), HangUp()]
        )
        assert result.stream_sid
        await rig.settle()
        after = await rig.ticket(sid)
        page = await rig.http.get("/api/tickets", params={"search": CALLER})
        assert page.status_code == 200
    assert after.id == before.id  # one ticket for the call, from the webhook to the end
    assert after.status == TicketStatus.COMPLETE and after.stream_sid == result.stream_sid
    assert after.end_reason != NO_MEDIA_STREAM


async def test_a_call_whose_stream_never_came_is_finished_by_the_ticket_service(tmp_path: Path) -> None:
    async with outbound_rig(tmp_path) as rig:
        sid = "CA" + "8" * 32
        caller = TwilioCaller(rig.base_url, auth_token=AUTH_TOKEN, public_base_url=PUBLIC_URL, call_sid=sid)
        params, headers = signed(caller)
        async with httpx.AsyncClient(base_url=rig.base_url, trust_env=False) as http:
            assert (await http.post("/twilio/voice", data=params, headers=headers)).status_code == 200
        assert (await rig.ticket(sid)).status == TicketStatus.IN_PROGRESS
        service = rig.services.observer
        assert isinstance(service, TicketService)
        assert await service.finish_streamless() == 0  # its token is still good: a stream may come
        later = datetime.now(UTC) + timedelta(seconds=streamless_after_s(rig.settings.stream_token_ttl_s) + 1)
        assert await service.finish_streamless(now=later) == 1
        view = await rig.ticket(sid)
    assert (view.status, view.end_reason) == (TicketStatus.COMPLETE, NO_MEDIA_STREAM)
