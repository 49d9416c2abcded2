"""Twilio's two ways in: the voice webhook (answers with TwiML) and the media websocket (one call).

Both check Twilio's signatures against the public URLs Twilio was given, not the ones seen behind
a proxy; the webhook mints a per-call stream token that the media stream's `start` must carry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response, WebSocket
from twilio.request_validator import RequestValidator
from twilio.twiml.voice_response import VoiceResponse

from callbot.adapters.heap import release_free_memory
from callbot.adapters.twilio_ws import TwilioSocket
from callbot.bridge import CallBridge
from callbot.compose import call_config
from callbot.core import stream_token
from callbot.core import twilio as tw
from callbot.core.call_lifecycle import arrival_info, placement_subject
from callbot.core.tools import whisper_twiml
from callbot.errors import StoreUnavailable
from callbot.settings import Settings
from callbot.web.calls import outbound_setup, stream_ended, stream_twiml
from callbot.web.services import Services
from callbot.web.twilio_forms import signed_form

log = logging.getLogger("callbot.web")

router = APIRouter()


@router.post("/twilio/voice")
async def voice(request: Request) -> Response:
    services: Services = request.app.state.services
    params = await signed_form(request, services.settings, "/twilio/voice", "voice webhook")
    if isinstance(params, Response):
        return params
    twiml, accepted = _twiml(services, params)
    if accepted:
        await _record_arrival(services, params)
    return Response(twiml, media_type="text/xml")


ARRIVAL_WAIT_S = 2.0
"""How long the webhook's answer waits for the call's first ticket write (it takes milliseconds
on a healthy database; Twilio waits 15 s for the answer). A slower database gets it in the
background and the stream's own first save follows, but a replica killed meanwhile then leaves
no ticket: the soak lost calls begun on a loaded machine with 0.5 s here."""
_arrivals: set[asyncio.Task[int]] = set()


async def _record_arrival(services: Services, params: dict[str, str]) -> None:
    """The call's ticket, written before Twilio has the TwiML: a replica killed before the
    stream's first save still leaves the call behind (README "Reliability"). Never fails the webhook."""
    info = arrival_info(params)
    if services.calls is None or info is None:
        return
    write = asyncio.ensure_future(services.calls.record_arrival(info, datetime.now(UTC)))
    _arrivals.add(write)
    write.add_done_callback(_arrival_written)
    await asyncio.wait({write}, timeout=ARRIVAL_WAIT_S)


def _arrival_written(write: asyncio.Task[int]) -> None:
    _arrivals.discard(write)
    if write.cancelled():
        return
    exc = write.exception()
    if isinstance(exc, StoreUnavailable):
        log.warning("the arriving call's ticket was not written, database unavailable: %s", exc)
    elif exc is not None:
        log.error("the arriving call's ticket was not written", exc_info=exc)


@router.websocket("/twilio/media")
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
        call_config(settings, services.tools),
        services.pacer,
        observer=services.observer,
        start_check=lambda start: _check_start(services, start),
        start_setup=lambda start: outbound_setup(services, start),
        summariser=services.summariser,
        summary_model=settings.summary_model if settings.summary_enabled else "",
        metrics=services.metrics,
        tool_runner=services.tool_runner,
        call_control=services.call_control,
        whispers=services.whispers,
        memory=services.memory,
    )
    services.active_calls.add(bridge)
    services.calls_total += 1
    services.metrics.active_calls.inc()
    try:
        await bridge.run()
        await stream_ended(services, bridge)
    finally:
        services.active_calls.discard(bridge)
        services.metrics.active_calls.dec()
        if not services.active_calls:
            release_free_memory()  # idle: freed heap pages go back to the OS (adapters/heap.py)


@router.post("/twilio/whisper/{token}")
async def whisper(request: Request, token: str) -> Response:
    """What the person who answers a transfer hears first: the call's brief (docs/call-control.md §3)."""
    services: Services = request.app.state.services
    params = await signed_form(request, services.settings, f"/twilio/whisper/{token}", "whisper request")
    if isinstance(params, Response):
        return params
    brief = services.whispers.get(token) if services.whispers is not None else None
    return Response(
        whisper_twiml(brief or "A caller transferred from the voice assistant."), media_type="text/xml"
    )


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


def _twiml(services: Services, params: dict[str, str]) -> tuple[str, bool]:
    """The TwiML that answers the webhook, and whether it takes the call (a stream) or turns it away."""
    settings = services.settings
    response = VoiceResponse()
    if not services.ready:
        services.metrics.rejected_calls.labels("draining").inc()
        response.say("Sorry, we are not taking calls right now. Please call again in a few minutes.")
        response.hangup()
        return str(response), False
    if len(services.active_calls) >= settings.max_concurrent_calls:
        services.metrics.rejected_calls.labels("busy").inc()
        response.say("All our lines are busy right now. Please call again in a few minutes.")
        response.hangup()
        return str(response), False
    call_sid = params.get("CallSid", "")
    token = stream_token.mint(services.stream_secret, call_sid, int(time.time()), settings.stream_token_ttl_s)
    parameters = {"token": token, "from": params.get("From", ""), "to": params.get("To", "")}
    return stream_twiml(settings, f"callbot-{call_sid}", parameters, response), True


def _check_start(services: Services, start: tw.Start) -> str | None:
    """The stream token covers the call sid (inbound) or callbot's placement id (outbound:
    the sid is unknown when the TwiML is written, docs/call-control.md §7)."""
    token = start.custom_parameters.get("token", "")
    placement = start.custom_parameters.get("placement")
    subject = placement_subject(placement) if placement else start.call_sid
    return stream_token.check(services.stream_secret, subject, token, int(time.time()))
