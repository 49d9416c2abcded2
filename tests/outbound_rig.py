"""The whole outbound world on loopback: the real server with its real ticket service (SQLite),
the fake Realtime server, the fake OpenAI HTTP API (ticket summaries), the fake Twilio REST API
and its dialer playing the called people and machines."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from openai import AsyncOpenAI

from callbot.adapters.realtime_openai import OpenAIRealtimeConnector
from callbot.adapters.store_sql import SqlTicketStore
from callbot.core.ticket_views import TicketView
from callbot.settings import Settings
from callbot.testing.fake_openai_http import FakeOpenAIControl, serve_fake_openai
from callbot.testing.fake_realtime import FakeRealtimeServer, Script
from callbot.testing.fake_twilio_dialer import FakeTwilioDialer
from callbot.testing.fake_twilio_rest import FakeTwilioRest
from callbot.testing.serving import serve_app
from callbot.web.app import Services, create_app
from tests.e2e_helpers import AUTH_TOKEN, PUBLIC_URL

ACCOUNT = "AC" + "5" * 32
FROM = "+15550001111"
ADMIN = ("admin", "secret")
VOICEMAIL = "Hello, this is Acme calling about your order. Please call us back."


@dataclass
class OutboundRig:
    fake: FakeRealtimeServer
    rest: FakeTwilioRest
    dialer: FakeTwilioDialer
    base_url: str
    app: FastAPI
    settings: Settings
    http: httpx.AsyncClient

    @property
    def services(self) -> Services:
        return self.app.state.services

    async def place(self, to: str, **fields: Any) -> httpx.Response:
        return await self.http.post("/api/calls", json={"to": to, **fields})

    async def settle(self, timeout_s: float = 60.0) -> None:
        """Every placed call has had its final callback, and every ticket is written."""
        deadline = time.monotonic() + timeout_s
        await self.dialer.wait_all(timeout_s)
        while self.services.active_calls and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.wait_for(self.services.observer.drain(), timeout=deadline - time.monotonic())  # type: ignore[union-attr]

    async def ticket(self, call_sid: str) -> TicketView:
        store = await SqlTicketStore.open(self.settings.database_url)
        try:
            view = await store.get_by_call_sid(call_sid)
        finally:
            await store.close()
        assert view is not None, f"no ticket for {call_sid}"
        return view


@contextlib.asynccontextmanager
async def outbound_rig(
    tmp_path: Path,
    script: Script | None = None,
    *,
    dialer_options: dict[str, Any] | None = None,
    **overrides: Any,
) -> AsyncIterator[OutboundRig]:
    rest = FakeTwilioRest(account_sid=ACCOUNT, auth_token=AUTH_TOKEN)
    control = FakeOpenAIControl()
    the_script = script or Script(
        greeting="Hi, this is Acme calling about your delivery.", realtime_factor=4.0
    )
    async with (
        FakeRealtimeServer(the_script) as fake,
        serve_fake_openai(control) as openai_url,
        serve_app(rest.app) as rest_url,
    ):
        values: dict[str, Any] = {
            "public_url": PUBLIC_URL,
            "twilio_auth_token": AUTH_TOKEN,
            "twilio_account_sid": ACCOUNT,
            "twilio_api_url": rest_url,
            "outbound_from_number": FROM,
            "voicemail_message": VOICEMAIL,
            "openai_api_key": "fake",
            "openai_base_url": openai_url,
            "database_url": f"sqlite+aiosqlite:///{tmp_path}/t.db",
            "spool_dir": tmp_path / "spool",
            "admin_password": ADMIN[1],
            "vad_silence_duration_ms": 400,
            "summary_enabled": False,
            "ticket_timeout_s": 20,
            "log_json": False,
        }
        values.update(overrides)
        settings = Settings(**values)
        connector = OpenAIRealtimeConnector(
            AsyncOpenAI(api_key="fake", base_url=fake.base_url), settings.model
        )
        app = create_app(settings, connector=connector)
        async with serve_app(app) as base_url:
            dialer = FakeTwilioDialer(rest, base_url, public_url=PUBLIC_URL, **(dialer_options or {}))
            async with httpx.AsyncClient(
                base_url=base_url, auth=ADMIN, timeout=30.0, trust_env=False
            ) as http:
                try:
                    yield OutboundRig(fake, rest, dialer, base_url, app, settings, http)
                finally:
                    await dialer.aclose()
