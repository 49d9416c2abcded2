"""Shared pieces for end-to-end tests: the real app on loopback, the fake Realtime server, a caller."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from openai import AsyncOpenAI

from callbot.adapters.fastpaths import probe_fast_paths
from callbot.adapters.realtime_openai import OpenAIRealtimeConnector
from callbot.adapters.summariser_openai import OpenAISummariser
from callbot.adapters.ticket_summariser_openai import OpenAITicketSummariser
from callbot.caller.simulator import TwilioCaller
from callbot.core.record import CallRecord
from callbot.core.ticket import DEFAULT_TICKET_PROMPT, TICKET_SCHEMA
from callbot.ports import Summariser
from callbot.settings import Settings
from callbot.testing.fake_openai_http import FakeOpenAIControl, serve_fake_openai
from callbot.testing.fake_realtime import FakeRealtimeServer, Script
from callbot.testing.serving import serve_app
from callbot.testing.speech import synth_speech
from callbot.web.app import create_app

AUTH_TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC_URL = "https://bot.example.test"


@dataclass
class RecordingObserver:
    """An in-memory ticket sink: keeps every record the bridge hands over."""

    started: list[CallRecord] = field(default_factory=list)
    progress: list[CallRecord] = field(default_factory=list)
    ended: list[CallRecord] = field(default_factory=list)

    async def call_started(self, record: CallRecord) -> None:
        self.started.append(record)

    async def call_progress(self, record: CallRecord) -> None:
        self.progress.append(record)

    async def call_ended(self, record: CallRecord) -> int | None:
        self.ended.append(record)
        return len(self.ended)


def speech(ms: int, seed: int) -> np.ndarray:
    return synth_speech(ms, 8000, seed=seed)


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "public_url": PUBLIC_URL,
        "twilio_auth_token": AUTH_TOKEN,
        "openai_api_key": "fake",
        "summary_enabled": False,
        "vad_silence_duration_ms": 400,
        "log_json": False,
    }
    values.update(overrides)
    return Settings(**values)


@dataclass
class Rig:
    fake: FakeRealtimeServer
    base_url: str
    observer: RecordingObserver
    settings: Settings

    def caller(self, **kwargs: Any) -> TwilioCaller:
        return TwilioCaller(self.base_url, auth_token=AUTH_TOKEN, public_base_url=PUBLIC_URL, **kwargs)


@contextlib.asynccontextmanager
async def running_rig(
    script: Script | None = None,
    *,
    summariser: Summariser | None = None,
    server_ws: str | None = None,
    **setting_overrides: Any,
) -> AsyncIterator[Rig]:
    """`server_ws` names one of uvicorn's own websocket protocols instead of callbot's channel;
    `fast_paths=False` serves with the public paths only, as `callbot serve` does when the
    probes fail (adapters/fastpaths.py)."""
    settings = make_settings(**setting_overrides)
    fast_paths = probe_fast_paths(settings.fast_paths)
    async with FakeRealtimeServer(script or Script()) as fake:
        client = AsyncOpenAI(api_key="fake", base_url=fake.base_url)
        observer = RecordingObserver()
        app = create_app(
            settings,
            connector=OpenAIRealtimeConnector(
                client, settings.model, direct_send=fast_paths.realtime_frames.active
            ),
            observer=observer,
            summariser=summariser,
        )
        if server_ws is None and not fast_paths.twilio_channel.active:
            server_ws = "auto"
        options = {"ws": server_ws} if server_ws else {}
        async with serve_app(app, **options) as base_url:
            yield Rig(fake, base_url, observer, settings)


@contextlib.asynccontextmanager
async def fake_ticket_model(
    control: FakeOpenAIControl | None = None,
) -> AsyncIterator[OpenAITicketSummariser]:
    """The ticket summariser of production against the fake OpenAI HTTP API (`control` sees its
    requests and can make it fail)."""
    async with serve_fake_openai(control or FakeOpenAIControl()) as base_url:
        client = AsyncOpenAI(api_key="k", base_url=base_url, max_retries=0)
        try:
            yield OpenAITicketSummariser(client, "m", TICKET_SCHEMA, DEFAULT_TICKET_PROMPT, 5.0)
        finally:
            await client.close()


@contextlib.asynccontextmanager
async def fake_summary_model(control: FakeOpenAIControl | None = None) -> AsyncIterator[OpenAISummariser]:
    """The in-call summariser of production (English bullet points) against the fake OpenAI HTTP
    API (`control` sees its requests)."""
    async with serve_fake_openai(control or FakeOpenAIControl()) as base_url:
        client = AsyncOpenAI(api_key="fake", base_url=base_url)
        try:
            yield OpenAISummariser(
                client, "gpt-5.4-mini", language="English", style="bullet points", timeout_s=10
            )
        finally:
            await client.close()
