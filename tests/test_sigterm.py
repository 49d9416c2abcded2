"""SIGTERM with calls in flight: `callbot serve` drains, ends calls politely and writes every ticket."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import httpx
from twilio.request_validator import RequestValidator

from callbot.adapters.store_sql import SqlTicketStore
from callbot.caller.simulator import HangUp, Say, Silence, WaitForAssistant
from callbot.testing.fake_openai_http import serve_fake_openai
from callbot.testing.fake_realtime import FakeRealtimeServer, Script
from tests.e2e_helpers import AUTH_TOKEN, PUBLIC_URL, speech

DRAIN_S = 6.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _wait_healthy(base_url: str, proc: asyncio.subprocess.Process) -> None:
    async with httpx.AsyncClient(base_url=base_url) as http:
        for _ in range(200):
            if proc.returncode is not None:
                raise AssertionError("callbot serve exited during start-up")
            try:
                if (await http.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("callbot serve did not become healthy")


async def test_sigterm_drains_active_calls_and_writes_every_ticket(tmp_path: Path) -> None:
    script = Script(
        greeting="Hello.", user_transcripts=["Quick question."], replies=["Sure."], realtime_factor=0
    )
    async with FakeRealtimeServer(script) as fake, serve_fake_openai() as openai_url:
        port = _free_port()
        base_url = f"http://127.0.0.1:{port}"
        database_url = f"sqlite+aiosqlite:///{tmp_path / 'tickets.db'}"
        env = {
            **os.environ,
            "OPENAI_API_KEY": "fake",
            "OPENAI_BASE_URL": openai_url,
            "CALLBOT_REALTIME_URL": fake.base_url,
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "CALLBOT_PUBLIC_URL": PUBLIC_URL,
            "CALLBOT_DATABASE_URL": database_url,
            "CALLBOT_SPOOL_DIR": str(tmp_path / "spool"),
            "CALLBOT_DRAIN_TIMEOUT_S": str(DRAIN_S),
            "CALLBOT_LOG_JSON": "false",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callbot", "serve", "--host", "127.0.0.1", "--port", str(port), env=env
        )
        try:
            await _wait_healthy(base_url, proc)

            def caller(call_sid: str):  # type: ignore[no-untyped-def]
                from callbot.caller.simulator import TwilioCaller

                return TwilioCaller(
                    base_url, auth_token=AUTH_TOKEN, public_base_url=PUBLIC_URL, call_sid=call_sid
                )

            short = [WaitForAssistant(timeout_s=10), Silence(2500), Say(speech(800, 1)), Silence(100)]
            short += [WaitForAssistant(timeout_s=10), HangUp()]
            long = [WaitForAssistant(timeout_s=10), Silence(60_000), HangUp()]
            sids = ["CA" + c * 32 for c in "abc"]
            calls = [
                asyncio.create_task(caller(sids[0]).run(short)),
                asyncio.create_task(caller(sids[1]).run(long)),
                asyncio.create_task(caller(sids[2]).run(long)),
            ]
            while len(fake.sessions) < 3:
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            async with httpx.AsyncClient(base_url=base_url) as http:
                health = await http.get("/healthz")
                params = {"CallSid": "CA" + "d" * 32, "From": "+15550000000", "To": "+15559870000"}
                sig = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + "/twilio/voice", params)
                late = await http.post("/twilio/voice", data=params, headers={"X-Twilio-Signature": sig})
            results = await asyncio.gather(*calls)
            code = await asyncio.wait_for(proc.wait(), timeout=DRAIN_S + 15)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert health.status_code == 503  # readiness fails as soon as the drain starts
    assert "<Connect>" not in late.text and "<Say>" in late.text  # new callers get a polite refusal
    assert code == 0
    finished, ended_a, ended_b = results
    assert finished.closed_by == "caller"  # the short call was allowed to finish
    assert ended_a.closed_by == "server" and ended_b.closed_by == "server"
    assert "<Say>We're sorry, this call has to end now." in ended_a.twiml  # what the caller then hears
    assert ended_a.duration_s < DRAIN_S + 5
    store = await SqlTicketStore.open(database_url)
    try:
        tickets = {sid: await store.get_by_call_sid(sid) for sid in sids}
    finally:
        await store.close()
    assert all(t is not None for t in tickets.values())
    reasons = {sid: t.end_reason for sid, t in tickets.items() if t is not None}
    assert reasons[sids[0]] == "caller hung up"
    assert reasons[sids[1]] == reasons[sids[2]] == "server shutting down"
    assert all(t.status in ("complete", "pending_summary") for t in tickets.values() if t is not None)
