"""Outbound calls and every call's life: `POST /api/calls`, Twilio's status and AMD callbacks, and
the media stream's per-call setup for calls callbot placed.

The decisions are in `callbot.core.call_lifecycle` (number and request checks, the agent for an
outbound call, the AMD policy, merging callbacks, the outcome); this module only reads requests,
checks signatures, and calls the Twilio REST port and the ticket store's `CallLog`.

Voicemail is left with a REST update of the live call to `<Say>` + `<Hangup/>` rather than by the
Realtime agent: the message is then spoken word for word, once, after the beep (the update stops
the media stream, docs/call-control.md §7), and a model that improvises, waits for a turn that
never comes or talks over the greeting cannot spoil it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from twilio.twiml.voice_response import VoiceResponse

from callbot.bridge import CallBridge, CallSetup
from callbot.compose import call_config
from callbot.core import stream_token
from callbot.core import twilio as tw
from callbot.core.call_control import CallCreate, CallUpdate
from callbot.core.call_lifecycle import (
    PlacedCall,
    amd_action,
    call_request,
    machine_detection,
    outbound_agent,
    parse_amd_callback,
    parse_status_callback,
    placement_subject,
)
from callbot.core.record import CallInfo
from callbot.errors import CallGone, InvalidCallRequest, StoreUnavailable, TicketNotFound, TwilioRestError
from callbot.settings import Settings
from callbot.web.review import BasicAuth
from callbot.web.twilio_forms import signed_form

if TYPE_CHECKING:
    from callbot.web.services import Services

log = logging.getLogger("callbot.web")

STATUS_PATH = "/twilio/status"
AMD_PATH = "/twilio/amd"
STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
PLACEMENT_WAIT_S = 3.0
"""How long a stream's start waits for its placement's ticket row (the create's answer and the
first ring race the stream only on a fake or a very fast answer)."""


def calls_router(settings: Settings) -> APIRouter:
    router = APIRouter()
    password = settings.admin_password.get_secret_value() if settings.admin_password else None
    auth = [Depends(BasicAuth(settings.admin_user, password))]
    router.add_api_route("/api/calls", place_call, methods=["POST"], dependencies=auth)
    router.add_api_route(STATUS_PATH, status_callback, methods=["POST"])
    router.add_api_route(AMD_PATH, amd_callback, methods=["POST"])
    return router


PENDING_SLACK_S = 60.0
"""A placed call still counts towards the limit this long after it stopped ringing, unless its
stream started or its final status came first."""


def _pending(services: Services) -> int:
    """Placed calls that still count towards CALLBOT_MAX_CONCURRENT_CALLS (forgetting stale ones)."""
    now = asyncio.get_running_loop().time()
    for call_sid in [sid for sid, until in services.outbound_pending.items() if until < now]:
        del services.outbound_pending[call_sid]
    return len(services.outbound_pending)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


# ----- placing a call -----


def stream_twiml(
    settings: Settings, name: str, parameters: dict[str, str], response: VoiceResponse | None = None
) -> str:
    """TwiML that connects the call's media stream to us, with these `<Parameter>`s (inbound
    calls from the webhook, outbound calls when they are placed)."""
    response = response if response is not None else VoiceResponse()
    stream = response.connect().stream(url=settings.media_ws_url, name=name[:64])
    for key, value in parameters.items():
        stream.parameter(name=key, value=value)
    # <Connect> blocks until our websocket closes; if callbot ends the call itself (upstream
    # failure, shutdown), Twilio goes on to this and the caller hears why (docs/protocols.md §2.3).
    response.say(settings.end_message)
    return str(response)


_REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
REQUEST_ID_KEEP_S = 600.0
"""How long this server remembers a placement under its `request_id` after the answer."""


async def place_call(request: Request) -> Response:
    """Place one call; answers at once with its call sid and ticket id (201).

    A body with a `request_id` is placed once per id: asking again while the first request is
    still being handled (a client cut off mid-request that tries again, `callbot call` resuming)
    waits for it and gets the same answer instead of a second call. This server remembers ids
    for `REQUEST_ID_KEEP_S`; a client asking another replica finds the placement by its ticket."""
    services: Services = request.app.state.services
    try:
        body = await request.json()
    except (ValueError, RecursionError):
        # not JSON, not UTF-8, or JSON Python cannot hold (a number of more than 4,300 digits,
        # nesting deeper than the recursion limit): a 400 like any other body that is not an object
        return _error(400, 'the body must be a JSON object: {"to": "+15551234567", ...}')
    if not isinstance(body, dict):
        return _error(400, 'the body must be a JSON object: {"to": "+15551234567", ...}')
    request_id = body.get("request_id")
    if request_id is None:
        return await _place(services, body)
    if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
        return _error(400, "request_id must be 8 to 64 letters, digits, '-' or '_'")
    loop = asyncio.get_running_loop()
    for old in [key for key, (_, until) in services.placements.items() if until < loop.time()]:
        del services.placements[old]
    earlier = services.placements.get(request_id)
    if earlier is not None:
        status, payload = await asyncio.shield(earlier[0])
        return JSONResponse(payload, status_code=status)
    answer: asyncio.Future[tuple[int, object]] = loop.create_future()
    services.placements[request_id] = (answer, loop.time() + REQUEST_ID_KEEP_S)
    try:
        response = await _place(services, body)
    except BaseException:
        services.placements.pop(request_id, None)
        answer.set_result(
            (503, {"error": "the first request with this request_id was interrupted; try again"})
        )
        raise
    if response.status_code == 201 and isinstance(response, JSONResponse):
        answer.set_result((201, json.loads(bytes(response.body))))
    else:  # nothing was placed: a retry under the same id may place it
        services.placements.pop(request_id, None)
        answer.set_result((response.status_code, json.loads(bytes(response.body))))
    return response


async def _place(services: Services, body: dict[str, object]) -> Response:
    settings = services.settings
    try:
        wanted = call_request(
            body.get("to"),
            from_=body.get("from"),
            instructions=body.get("instructions"),
            context=body.get("context"),
        )
    except InvalidCallRequest as exc:
        return _error(400, str(exc))
    missing = settings.outbound_problems(wanted.from_)
    if services.calls is None:
        missing.append("a ticket store (this server has none)")
    if missing or services.call_control is None or services.calls is None:
        return _error(503, "this server cannot place calls; set " + ", ".join(missing))
    if not services.ready:
        return _error(503, "the server is shutting down")
    in_flight = len(services.active_calls) + _pending(services)
    if in_flight >= settings.max_concurrent_calls:
        return _error(
            429,
            f"{in_flight} calls in flight: CALLBOT_MAX_CONCURRENT_CALLS is {settings.max_concurrent_calls}",
        )
    from_number = wanted.from_ or settings.outbound_from_number or ""
    placement_id = secrets.token_hex(16)
    ttl_s = settings.outbound_ring_timeout_s + settings.stream_token_ttl_s
    token = stream_token.mint(
        services.stream_secret, placement_subject(placement_id), int(time.time()), ttl_s
    )
    parameters = {"token": token, "placement": placement_id, "from": from_number, "to": wanted.to}
    public = settings.require_public_url()
    create = CallCreate(
        to=wanted.to,
        from_=from_number,
        twiml=stream_twiml(settings, f"callbot-out-{placement_id}", parameters),
        status_callback=public + STATUS_PATH,
        status_events=STATUS_EVENTS,
        machine_detection=machine_detection(settings.machine_policy, settings.voicemail_message),
        amd_status_callback=public + AMD_PATH,
        ring_timeout_s=settings.outbound_ring_timeout_s,
    )
    # The slot is taken before the create is awaited, so concurrent requests cannot all pass the check.
    forget_at = asyncio.get_running_loop().time() + settings.outbound_ring_timeout_s + PENDING_SLACK_S
    slot = f"placing:{placement_id}"
    services.outbound_pending[slot] = forget_at
    try:
        created = await services.call_control.create_call(create)
    except TwilioRestError as exc:
        log.warning("placing a call to %s failed: %s", wanted.to, exc)
        return _error(502, f"Twilio refused the call: {exc}")
    finally:
        services.outbound_pending.pop(slot, None)
    services.outbound_pending[created.call_sid] = forget_at
    info = CallInfo(
        call_sid=created.call_sid,
        stream_sid="",
        account_sid=settings.twilio_account_sid or "",
        from_number=from_number,
        to_number=wanted.to,
        direction="outbound",
    )
    placed = PlacedCall(placement_id, wanted.instructions, wanted.context)
    try:
        ticket_id = await services.calls.create_placed_call(info, placed, datetime.now(UTC))
    except StoreUnavailable as exc:
        # The call is ringing already; without its row the stream would be refused, so end it.
        log.error(
            "call %s placed but its ticket could not be written, canceling it: %s", created.call_sid, exc
        )
        await _update_quietly(services, created.call_sid, CallUpdate(status="canceled"))
        return _error(503, "the ticket database is unavailable; the call was canceled")
    log.info("placed call %s to %s (ticket %s)", created.call_sid, wanted.to, ticket_id)
    body_out = {"call_sid": created.call_sid, "ticket_id": ticket_id, "status": created.status}
    return JSONResponse(body_out, status_code=201)


async def outbound_setup(services: Services, start: tw.Start) -> CallSetup:
    """A stream's per-call configuration: for an outbound call, the agent told why it calls.

    The placement id comes from an unsigned `<Parameter>`, but the stream token (checked before
    this) is an HMAC over it, and the ticket row for the stream's call sid must carry it too."""
    placement = start.custom_parameters.get("placement")
    if not placement:
        return CallSetup()
    services.outbound_pending.pop(start.call_sid, None)
    if services.calls is None:
        return CallSetup(refusal="an outbound stream, but this server has no ticket store")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + PLACEMENT_WAIT_S
    while True:
        try:
            placed = await services.calls.placed_call(start.call_sid)
        except StoreUnavailable as exc:
            return CallSetup(refusal=f"outbound call's placement unreadable: {exc}")
        if placed is not None or loop.time() >= deadline:
            break
        await asyncio.sleep(0.05)
    if placed is None or not secrets.compare_digest(placed.placement_id, placement):
        return CallSetup(refusal="the stream's placement does not match its call")
    base = call_config(services.settings, services.tools).agent
    return CallSetup(agent=outbound_agent(base, placed.instructions, placed.context), direction="outbound")


async def stream_ended(services: Services, bridge: CallBridge) -> None:
    """The stream's ticket is saved: work the call's outcome out again (a callback may be in)."""
    info = bridge.session.info
    if services.calls is None or info is None:
        return
    services.outbound_pending.pop(info.call_sid, None)
    try:
        await services.calls.refresh_outcome(info.call_sid)
    except StoreUnavailable as exc:
        log.warning("call %s: outcome not refreshed, database unavailable: %s", info.call_sid, exc)


# ----- Twilio's callbacks -----


async def status_callback(request: Request) -> Response:
    """Twilio's call progress, for inbound and outbound calls: onto the call's ticket."""
    services: Services = request.app.state.services
    params = await signed_form(request, services.settings, STATUS_PATH, "status callback")
    if isinstance(params, Response):
        return params
    try:
        update = parse_status_callback(params)
    except InvalidCallRequest as exc:
        return Response(str(exc), status_code=400, media_type="text/plain")
    if update.final:
        services.outbound_pending.pop(update.call_sid, None)
    if services.calls is None:
        return Response(status_code=204)
    try:
        ticket_id = await services.calls.apply_status(update)
    except StoreUnavailable as exc:
        # Twilio posts a callback once, whatever we answer: the status pass asks Twilio for it
        # once the database is back (callbot/call_status.py), so the status is late, not lost.
        log.warning(
            "call %s: status %s not recorded now, database unavailable (looked up later): %s",
            update.call_sid,
            update.status,
            exc,
        )
        return Response(
            "accepted, not recorded yet: the ticket store is unavailable; callbot asks Twilio for "
            "the call's final status once it is back",
            status_code=202,
            media_type="text/plain",
        )
    log.info("call %s: Twilio status %s (ticket %s)", update.call_sid, update.status, ticket_id)
    return Response(status_code=204)


async def amd_callback(request: Request) -> Response:
    """The asynchronous answering-machine result: talk, leave the voicemail, or hang up."""
    services: Services = request.app.state.services
    settings = services.settings
    params = await signed_form(request, settings, AMD_PATH, "AMD callback")
    if isinstance(params, Response):
        return params
    try:
        call_sid, answered_by = parse_amd_callback(params)
    except InvalidCallRequest as exc:
        return Response(str(exc), status_code=400, media_type="text/plain")
    action = amd_action(answered_by, settings.machine_policy, settings.voicemail_message)
    log.info("call %s: answered by %s -> %s", call_sid, answered_by or "?", action)
    await _record_amd(services, call_sid, answered_by, voicemail_left=False)  # before acting on it
    voicemail_left = False
    if action == "voicemail":
        response = VoiceResponse()
        response.say(settings.voicemail_message)
        response.hangup()
        voicemail_left = await _update_quietly(services, call_sid, CallUpdate(twiml=str(response)))
    elif action == "hangup":
        await _update_quietly(services, call_sid, CallUpdate(status="completed"))
    if voicemail_left:
        await _record_amd(services, call_sid, answered_by, voicemail_left=True)
    return Response(status_code=204)


async def _record_amd(services: Services, call_sid: str, answered_by: str, *, voicemail_left: bool) -> None:
    if services.calls is None:
        return
    try:
        await services.calls.apply_amd(call_sid, answered_by, voicemail_left=voicemail_left)
    except (StoreUnavailable, TicketNotFound) as exc:
        log.warning("call %s: AnsweredBy not recorded: %s", call_sid, exc)


async def _update_quietly(services: Services, call_sid: str, update: CallUpdate) -> bool:
    """Send a call update; True if Twilio took it (a call already gone is logged, not raised)."""
    if services.call_control is None:
        return False
    try:
        await services.call_control.update_call(call_sid, update)
        return True
    except CallGone:
        log.info("call %s ended before its update", call_sid)
    except TwilioRestError as exc:
        log.warning("call %s: update failed: %s", call_sid, exc)
    return False
