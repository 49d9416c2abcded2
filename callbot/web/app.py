"""The FastAPI application: Twilio's voice webhook, the media websocket, health and review routes.

`create_app(settings)` is the composition root: the OpenAI client, the Realtime connector, the
pacer and the ticket service are built in the lifespan, never at import time. Tests pass their
own connector/observer to run the real app against the fake Realtime server.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response, WebSocket
from fastapi.responses import JSONResponse
from openai import AsyncOpenAI
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import VoiceResponse

from callbot.adapters.fastpaths import FastPaths, probe_fast_paths, summary_line
from callbot.adapters.heap import release_free_memory
from callbot.adapters.realtime_openai import OpenAIRealtimeConnector, RealtimeConnector
from callbot.adapters.spool import Spool
from callbot.adapters.store_migrate import upgrade_if_needed
from callbot.adapters.store_sql import SqlTicketStore, StoreUnavailable
from callbot.adapters.summariser_openai import OpenAISummariser, Summariser
from callbot.adapters.ticket_summariser_openai import OpenAITicketSummariser
from callbot.adapters.twilio_ws import TwilioSocket
from callbot.adapters.webhook import TicketWebhook
from callbot.adapters.ws_channel import ChannelWebSocketProtocol
from callbot.bridge import CallBridge, CallObserver, Pacer
from callbot.core import realtime as rt
from callbot.core import stream_token
from callbot.core import twilio as tw
from callbot.core.call import CallConfig
from callbot.core.recovery import RecoveryPolicy
from callbot.core.summary import DEFAULT_PROMPT, SummaryPolicy
from callbot.core.ticket import load_prompt, load_schema
from callbot.metrics import Metrics
from callbot.settings import Settings
from callbot.ticketing import TicketService
from callbot.web.review import review_router

log = logging.getLogger("callbot.web")


def call_config(settings: Settings) -> CallConfig:
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
    )
    return CallConfig(
        agent=agent,
        playback_lead_ms=settings.playback_lead_ms,
        mark_interval_ms=settings.mark_interval_ms,
        media_message_ms=settings.media_message_ms,
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


def summary_template(settings: Settings) -> str:
    if settings.summary_prompt_file is None:
        return DEFAULT_PROMPT
    return settings.summary_prompt_file.read_text(encoding="utf-8")


@dataclass
class Services:
    """What the routes need, built in the lifespan (or injected by tests)."""

    settings: Settings
    connector: RealtimeConnector
    fast_paths: FastPaths
    metrics: Metrics = field(default_factory=Metrics)
    pacer: Pacer = field(init=False)
    observer: CallObserver | None = None
    summariser: Summariser | None = None
    store: SqlTicketStore | None = None
    stream_secret: bytes = b""
    active_calls: set[CallBridge] = field(default_factory=set)
    calls_total: int = 0
    ready: bool = True

    def __post_init__(self) -> None:
        self.pacer = Pacer(self.metrics)
        for path in self.fast_paths.all():
            self.metrics.fast_path.labels(path.name).set(1 if path.active else 0)

    async def drain(self, timeout_s: float) -> None:
        """Graceful shutdown: take no new calls, let active ones finish, then end the rest politely.

        Each ended call closes its media websocket, so Twilio speaks the TwiML's end message; each
        bridge writes its ticket as it finishes, and this returns once every bridge is done.
        """
        self.ready = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        log.info("draining: %d active calls, up to %.0f s", len(self.active_calls), timeout_s)
        while self.active_calls and loop.time() < deadline:
            await asyncio.sleep(0.1)
        for bridge in list(self.active_calls):
            bridge.hang_up("server shutting down")
        while self.active_calls:
            await asyncio.sleep(0.05)
        log.info("drained: every call has ended")


def _stream_secret(settings: Settings) -> bytes:
    if settings.twilio_auth_token is not None:
        return settings.twilio_auth_token.get_secret_value().encode()
    log.warning("no TWILIO_AUTH_TOKEN: stream tokens use a per-process secret (one replica only)")
    return secrets.token_bytes(32)


def create_app(
    settings: Settings,
    *,
    connector: RealtimeConnector | None = None,
    observer: CallObserver | None = None,
    summariser: Summariser | None = None,
    extra_setup: Callable[[FastAPI], Any] | None = None,
    freeze_gc_after_startup: bool = False,
) -> FastAPI:
    """Build the app. What is not injected (tests inject fakes) is built in the lifespan.

    `freeze_gc_after_startup` (`callbot serve`): once started, `gc.freeze()` what is alive."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if connector is None:
            settings.check_serving()
        fast_paths = probe_fast_paths(settings.fast_paths)
        log.info("fast paths: %s", summary_line(fast_paths))
        client = _openai_client(settings)
        real_connector = connector or OpenAIRealtimeConnector(
            client, settings.model, direct_send=fast_paths.realtime_frames.active
        )
        real_summariser = summariser
        if real_summariser is None and settings.summary_enabled:
            real_summariser = OpenAISummariser(
                client,
                settings.summary_model,
                language=settings.summary_language,
                style=settings.summary_style,
                template=summary_template(settings),
                timeout_s=settings.summary_timeout_s,
            )
        services = Services(
            settings=settings,
            connector=real_connector,
            fast_paths=fast_paths,
            observer=observer,
            summariser=real_summariser,
            stream_secret=_stream_secret(settings),
        )
        tickets = None
        if observer is None:
            tickets = await Ticketing.open(settings, client)
            services.observer, services.store = tickets.service, tickets.store
        app.state.services = services
        if freeze_gc_after_startup:
            gc.freeze()
        try:
            yield
        finally:
            services.ready = False
            await services.pacer.stop()
            if tickets is not None:
                await tickets.close()

    app = FastAPI(title="callbot", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        services: Services = request.app.state.services
        return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    async def healthz(request: Request) -> JSONResponse:
        services: Services = request.app.state.services
        status = 200 if services.ready else 503
        body = {
            "status": "ok" if services.ready else "draining",
            "active_calls": len(services.active_calls),
            "fast_paths": services.fast_paths.describe(),
        }
        return JSONResponse(body, status_code=status)

    @app.post("/twilio/voice")
    async def voice(request: Request) -> Response:
        services: Services = request.app.state.services
        form = await request.form()
        params = {key: str(value) for key, value in form.items()}
        if not _signature_ok(services.settings, request, params):
            log.warning("rejecting a voice webhook with a bad or missing X-Twilio-Signature")
            return Response("invalid signature", status_code=403, media_type="text/plain")
        return Response(_twiml(services, params), media_type="text/xml")

    @app.websocket("/twilio/media")
    async def media(ws: WebSocket) -> None:
        services: Services = ws.app.state.services
        settings = services.settings
        refusal = _upgrade_refusal(settings, ws.headers.get("x-twilio-signature"))
        if refusal is not None:
            log.warning("refusing a media websocket: %s", refusal)
            services.metrics.rejected_calls.labels("bad_stream_signature").inc()
            await ws.close(code=1008)
            return
        await ws.accept()
        twilio = TwilioSocket(ws, settings.max_message_bytes)
        twilio.accepted()
        log.info("media websocket accepted (%s)", "direct text channel" if twilio.direct else "ASGI messages")
        bridge = CallBridge(
            twilio,
            services.connector,
            call_config(settings),
            services.pacer,
            observer=services.observer,
            start_check=lambda start: _check_start(services, start),
            summariser=services.summariser,
            summary_model=settings.summary_model if settings.summary_enabled else "",
            metrics=services.metrics,
        )
        services.active_calls.add(bridge)
        services.calls_total += 1
        services.metrics.active_calls.inc()
        try:
            await bridge.run()
        finally:
            services.active_calls.discard(bridge)
            services.metrics.active_calls.dec()
            if not services.active_calls:
                release_free_memory()  # idle: freed heap pages go back to the OS (adapters/heap.py)

    def current_store() -> SqlTicketStore:
        store: SqlTicketStore | None = app.state.services.store
        if store is None:
            raise StoreUnavailable("this server has no ticket store")
        return store

    password = settings.admin_password.get_secret_value() if settings.admin_password else None
    app.include_router(review_router(current_store, settings.admin_user, password))
    if extra_setup is not None:
        extra_setup(app)
    return app


def _openai_client(settings: Settings) -> AsyncOpenAI:
    api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "not-configured"
    return AsyncOpenAI(
        api_key=api_key, base_url=settings.openai_base_url, websocket_base_url=settings.realtime_url
    )


class Ticketing:
    """The ticket store, the ticket service and its background retry loop, for one app."""

    def __init__(self, store: SqlTicketStore, service: TicketService, retry_interval_s: float) -> None:
        self.store = store
        self.service = service
        self._background = asyncio.get_running_loop().create_task(
            service.run_background(retry_interval_s), name="ticket-retries"
        )

    @classmethod
    async def open(cls, settings: Settings, client: AsyncOpenAI) -> Ticketing:
        if settings.migrate_on_start:
            try:
                await upgrade_if_needed(settings.database_url)
            except Exception:
                # The server still takes calls: finished tickets are spooled to disk meanwhile.
                log.exception("could not apply database migrations at start-up")
        store = await SqlTicketStore.open(settings.database_url)
        schema = load_schema(_read(settings.ticket_schema_file))
        prompt = load_prompt(_read(settings.ticket_prompt_file))
        summariser = OpenAITicketSummariser(
            client, settings.ticket_model, schema, prompt, settings.ticket_timeout_s
        )
        webhook = TicketWebhook(settings.ticket_webhook_url) if settings.ticket_webhook_url else None
        service = TicketService(
            store,
            summariser,
            Spool(settings.spool_dir),
            webhook,
            settings.redact_patterns,
            settings.ticket_timeout_s,
        )
        return cls(store, service, settings.ticket_retry_interval_s)

    async def close(self) -> None:
        self._background.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._background
        await self.service.aclose()  # drains in-flight tickets first
        await self.store.close()


def _read(path: Path | None) -> str | None:
    return path.read_text(encoding="utf-8") if path is not None else None


def _signature_ok(settings: Settings, request: Request, params: dict[str, str]) -> bool:
    """Validate against the public URL Twilio called, not the one we see behind a proxy
    (docs/protocols.md §3.2)."""
    if not settings.validate_twilio_signatures:
        return True
    signature = request.headers.get("x-twilio-signature")
    if not signature or settings.twilio_auth_token is None:
        return False
    url = settings.voice_webhook_url
    if request.url.query:
        url += "?" + request.url.query
    validator = RequestValidator(settings.twilio_auth_token.get_secret_value())
    return bool(validator.validate(url, params, signature))


def server_options(settings: Settings) -> dict[str, Any]:
    """How callbot is served by uvicorn (`callbot serve`, the load benchmark): the media stream's
    websocket protocol with its direct text channel where its probe passed (else uvicorn's own),
    and the message size bound."""
    options: dict[str, Any] = {
        "ws_max_size": settings.max_message_bytes,
        "proxy_headers": True,
        "log_config": None,
    }
    if probe_fast_paths(settings.fast_paths).twilio_channel.active:
        options["ws"] = ChannelWebSocketProtocol
    return options


def _upgrade_refusal(settings: Settings, signature: str | None) -> str | None:
    """Check the media websocket upgrade against the wss:// URL in our TwiML (docs/protocols.md §3.3)."""
    if not settings.validate_twilio_signatures:
        return None
    if signature is None:
        return "no X-Twilio-Signature on the upgrade" if settings.require_stream_signature else None
    if settings.twilio_auth_token is None:
        return "no TWILIO_AUTH_TOKEN to check the upgrade's signature"
    validator = RequestValidator(settings.twilio_auth_token.get_secret_value())
    if not validator.validate(settings.media_ws_url, {}, signature):
        return "bad X-Twilio-Signature on the upgrade"
    return None


def _twiml(services: Services, params: dict[str, str]) -> str:
    settings = services.settings
    response = VoiceResponse()
    if not services.ready:
        services.metrics.rejected_calls.labels("draining").inc()
        response.say("Sorry, we are not taking calls right now. Please call again in a few minutes.")
        response.hangup()
        return str(response)
    if len(services.active_calls) >= settings.max_concurrent_calls:
        services.metrics.rejected_calls.labels("busy").inc()
        response.say("All our lines are busy right now. Please call again in a few minutes.")
        response.hangup()
        return str(response)
    call_sid = params.get("CallSid", "")
    token = stream_token.mint(services.stream_secret, call_sid, int(time.time()), settings.stream_token_ttl_s)
    stream = response.connect().stream(url=settings.media_ws_url, name=f"callbot-{call_sid}"[:64])
    stream.parameter(name="token", value=token)
    stream.parameter(name="from", value=params.get("From", ""))
    stream.parameter(name="to", value=params.get("To", ""))
    # <Connect> blocks until our websocket closes; if callbot ends the call itself (upstream
    # failure, shutdown), Twilio goes on to this and the caller hears why (docs/protocols.md §2.3).
    response.say(settings.end_message)
    return str(response)


def _check_start(services: Services, start: tw.Start) -> str | None:
    token = start.custom_parameters.get("token", "")
    return stream_token.check(services.stream_secret, start.call_sid, token, int(time.time()))
