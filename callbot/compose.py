"""Builds the real adapters into what the bridge and the ticket service need, from the settings.

The one place that knows which adapter implements which port: the server (`web/services.py`,
at start-up) and the CLI (`callbot tickets retry`) both build their OpenAI client, Realtime
connector, summarisers and ticket service here, so the two cannot drift apart. Nothing is built
at import time. Files named by the settings (prompts, schema) are read here, so a bad
deployment fails at start, not at the first hang-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml
from openai import AsyncOpenAI

from callbot.adapters.fastpaths import FastPaths
from callbot.adapters.realtime_openai import OpenAIRealtimeConnector
from callbot.adapters.spool import Spool
from callbot.adapters.store_migrate import upgrade_if_needed
from callbot.adapters.store_sql import SqlTicketStore
from callbot.adapters.summariser_openai import OpenAISummariser
from callbot.adapters.ticket_summariser_openai import OpenAITicketSummariser
from callbot.adapters.webhook import TicketWebhook
from callbot.core import realtime as rt
from callbot.core.call import CallConfig
from callbot.core.call_control import CallCreate, CallState, CallUpdate, CreatedCall
from callbot.core.call_lifecycle import streamless_after_s
from callbot.core.leases import LeasePolicy
from callbot.core.memory import MemoryPolicy
from callbot.core.recovery import RecoveryPolicy
from callbot.core.summary import DEFAULT_PROMPT, SummaryPolicy
from callbot.core.ticket import load_prompt, load_schema
from callbot.core.tool_config import ToolsConfig, check_transfer_target, realtime_tools, tools_config
from callbot.errors import StoreUnavailable, ToolsFileError
from callbot.ports import CallControl, RealtimeConnector, Summariser
from callbot.settings import Settings
from callbot.ticketing import CallerMemoryService, TicketService

log = logging.getLogger("callbot.web")


def openai_client(settings: Settings) -> AsyncOpenAI:
    api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "not-configured"
    return AsyncOpenAI(
        api_key=api_key, base_url=settings.openai_base_url, websocket_base_url=settings.realtime_url
    )


def realtime_connector(settings: Settings, client: AsyncOpenAI, fast_paths: FastPaths) -> RealtimeConnector:
    return OpenAIRealtimeConnector(client, settings.model, direct_send=fast_paths.realtime_frames.active)


def summariser(settings: Settings, client: AsyncOpenAI) -> Summariser | None:
    """The in-call summariser, or None when in-call summaries are off."""
    if not settings.summary_enabled:
        return None
    return OpenAISummariser(
        client,
        settings.summary_model,
        language=settings.summary_language,
        style=settings.summary_style,
        template=summary_template(settings),
        timeout_s=settings.summary_timeout_s,
    )


def summary_template(settings: Settings) -> str:
    if settings.summary_prompt_file is None:
        return DEFAULT_PROMPT
    return settings.summary_prompt_file.read_text(encoding="utf-8")


def load_tools(settings: Settings) -> ToolsConfig:
    """The tools file (YAML or JSON) checked, with `${VAR}` filled from the environment, and the
    built-ins as the settings say. Raises `ToolsFileError` naming the bad entry, at start-up."""
    transfer_to = settings.transfer_to or None
    if transfer_to is not None:
        check_transfer_target(transfer_to)
    data: Any = None
    path = settings.tools_file
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ToolsFileError(f"CALLBOT_TOOLS_FILE {path}: cannot be read ({exc.strerror})") from exc
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise ToolsFileError(f"CALLBOT_TOOLS_FILE {path}: not valid YAML or JSON: {exc}") from exc
    try:
        return tools_config(data, os.environ, end_call=settings.end_call_tool, transfer_to=transfer_to)
    except ToolsFileError as exc:
        raise ToolsFileError(f"CALLBOT_TOOLS_FILE {path}: {exc}" if path else str(exc)) from exc


def call_config(settings: Settings, tools: ToolsConfig | None = None) -> CallConfig:
    """One call's configuration for the core: the agent's session and every policy.

    `tools` is what `load_tools` made at start-up (the file is not read again per call)."""
    tools = tools if tools is not None else ToolsConfig(end_call=False)
    agent = rt.AgentConfig(
        model=settings.model,
        voice=settings.voice,
        instructions=settings.instructions,
        greeting=settings.greeting,
        audio_mode=settings.audio_mode,
        transcription_model=settings.transcription_model or None,
        transcription_language=settings.transcription_language,
        vad_type=settings.vad_type,
        vad_threshold=settings.vad_threshold,
        vad_prefix_padding_ms=settings.vad_prefix_padding_ms,
        vad_silence_duration_ms=settings.vad_silence_duration_ms,
        vad_eagerness=settings.vad_eagerness,
        noise_reduction=None if settings.noise_reduction == "off" else settings.noise_reduction,
        truncation_retention_ratio=settings.truncation_retention_ratio,
        session_tools=tuple(realtime_tools(tools)),
    )
    return CallConfig(
        agent=agent,
        tools=tools,
        playback_lead_ms=settings.playback_lead_ms,
        mark_interval_ms=settings.mark_interval_ms,
        media_message_ms=settings.media_message_ms,
        playback_prebuffer_ms=settings.playback_prebuffer_ms,
        session_ready_timeout_ms=int(settings.session_ready_timeout_s * 1000),
        inbound_batch_frames=settings.inbound_batch_frames,
        recovery=RecoveryPolicy(
            max_reconnects=settings.max_reconnects,
            session_max_age_ms=int(settings.session_max_age_s * 1000),
            twilio_idle_timeout_ms=int(settings.twilio_idle_timeout_s * 1000),
        ),
        summary=SummaryPolicy(
            enabled=settings.summary_enabled,
            trigger_tokens=settings.summary_trigger_tokens,
            keep_last_turns=settings.keep_last_turns,
            transcript_wait_ms=settings.transcript_wait_ms,
            retry_after_ms=int(settings.summary_retry_after_s * 1000),
        ),
    )


def call_control(settings: Settings) -> CallControl | None:
    """Twilio's REST API for calls, or None without TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN."""
    if not settings.twilio_account_sid or settings.twilio_auth_token is None:
        return None
    account_sid, auth_token = settings.twilio_account_sid, settings.twilio_auth_token.get_secret_value()

    def build() -> CallControl:
        from callbot.adapters.twilio_rest import TwilioRestCalls

        return TwilioRestCalls(account_sid, auth_token, api_url=settings.twilio_api_url)

    return CallControlOnFirstUse(build)


class CallControlOnFirstUse:
    """A `CallControl` built at its first request: the twilio library's REST client and the HTTP
    stack it imports (requests, urllib3: about 16 MB of RSS) stay out of a server that has not
    yet hung up, transferred or placed a call (bench/README.md, idle memory)."""

    def __init__(self, build: Callable[[], CallControl]) -> None:
        self._build = build
        self._built: CallControl | None = None

    def _control(self) -> CallControl:
        if self._built is None:
            self._built = self._build()
        return self._built

    async def update_call(self, call_sid: str, update: CallUpdate) -> None:
        await self._control().update_call(call_sid, update)

    async def create_call(self, request: CallCreate) -> CreatedCall:
        return await self._control().create_call(request)

    async def fetch_call(self, call_sid: str) -> CallState:
        return await self._control().fetch_call(call_sid)

    async def aclose(self) -> None:
        if self._built is not None:
            await self._built.aclose()


# ----- tickets -----


def build_ticket_service(
    settings: Settings,
    store: SqlTicketStore,
    client: AsyncOpenAI,
    webhook_client: httpx.AsyncClient | None = None,
) -> TicketService:
    """The service as configured: schema and prompt files, redaction, spool, optional webhook.

    Raises TicketSchemaError or OSError if a configured file is unusable."""
    summariser = OpenAITicketSummariser(
        client,
        settings.ticket_model,
        load_schema(_read(settings.ticket_schema_file)),
        load_prompt(_read(settings.ticket_prompt_file)),
        settings.ticket_timeout_s,
    )
    webhook = (
        TicketWebhook(settings.ticket_webhook_url, client=webhook_client)
        if settings.ticket_webhook_url
        else None
    )
    return TicketService(
        store,
        summariser,
        Spool(settings.spool_dir),
        webhook,
        redact_patterns=settings.redact_patterns,
        timeout_s=settings.ticket_timeout_s,
        webhook_redeliver_s=settings.ticket_webhook_redeliver_s,
        streamless_after_s=streamless_after_s(settings.stream_token_ttl_s),
    )


def memory_policy(settings: Settings) -> MemoryPolicy:
    """The memory message stays in the context verbatim (core/memory.py), so it takes at most half
    of the summary trigger: the summariser can always bring the context back under its trigger."""
    max_tokens = settings.memory_max_tokens
    if settings.summary_enabled:
        max_tokens = min(max_tokens, settings.summary_trigger_tokens // 2)
    return MemoryPolicy(
        enabled=settings.memory_enabled,
        max_calls=settings.memory_max_calls,
        days=settings.memory_days,
        max_tokens=max_tokens,
    )


def caller_memory(settings: Settings, store: SqlTicketStore) -> CallerMemoryService | None:
    """The returning callers' memory over the ticket store, or None when it is off."""
    if not settings.memory_enabled:
        return None
    return CallerMemoryService(
        store,
        memory_policy(settings),
        settings.redact_patterns,
        timeout_s=settings.memory_lookup_timeout_s,
    )


class Ticketing:
    """The ticket store, the ticket service and its background retry loop, for one server."""

    def __init__(
        self,
        store: SqlTicketStore,
        service: TicketService,
        retry_interval_s: float,
        lease_policy: LeasePolicy | None = None,
    ) -> None:
        self.store = store
        self.service = service
        loop = asyncio.get_running_loop()
        self._background = loop.create_task(service.run_background(retry_interval_s), name="ticket-retries")
        self._leases: asyncio.Task[None] | None = None
        if lease_policy is not None and store.replica_id is not None:
            self._leases = loop.create_task(
                service.run_leases(store, store.replica_id, lease_policy), name="replica-lease"
            )

    @classmethod
    async def open(cls, settings: Settings, client: AsyncOpenAI) -> Ticketing:
        if settings.migrate_on_start:
            try:
                await upgrade_if_needed(settings.database_url)
            except Exception:
                # The server still takes calls: finished tickets are spooled to disk meanwhile.
                log.exception("could not apply database migrations at start-up")
        rid = replica_id(settings)
        log.info("replica id %s (lease %g s)", rid, settings.replica_lease_s)
        store = await SqlTicketStore.open(settings.database_url, replica_id=rid)
        return cls(
            store,
            build_ticket_service(settings, store, client),
            settings.ticket_retry_interval_s,
            LeasePolicy.from_lease(int(settings.replica_lease_s * 1000)),
        )

    async def close(self) -> None:
        self._background.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._background
        await self.service.aclose()  # drains in-flight tickets first
        if self._leases is not None:
            # Every call of this replica is finished: nobody need take its tickets over.
            self._leases.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._leases
            if self.store.replica_id is not None:
                with contextlib.suppress(StoreUnavailable):
                    await self.store.release_lease(self.store.replica_id)
        await self.store.close()


def replica_id(settings: Settings) -> str:
    """`CALLBOT_REPLICA_ID`, else host name, pid and a random suffix: a restart is a new replica."""
    if settings.replica_id:
        return settings.replica_id
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _read(path: Path | None) -> str | None:
    return path.read_text(encoding="utf-8") if path is not None else None
