"""A fake of Twilio's REST API for calls, for the offline demo, the tests and the benchmarks.

It speaks the wire format the `twilio` library sends (form-encoded POSTs with PascalCase
fields, HTTP Basic auth with the account sid and auth token, JSON answers with `sid` and
`status`; docs/call-control.md §1) and records every request, so a test can check what callbot
asked for. What Twilio does next is left to hooks, because that is where the other side lives:

- `on_update(call, update)` runs when a live call is completed or given new TwiML. Twilio then
  stops the call's media stream; a test wires this to the caller simulator, which sends `stop`.
- `on_create(call)` runs when a call is placed: the fake's dialer rings, answers and opens the
  media stream (issue 16 builds that on this hook).

A call the fake has never heard of answers 404 with Twilio's code 20404, as Twilio does for a
call that is gone; an inbound call (which Twilio would know from the start) is made known with
`register_call`. A call already in a final status refuses updates with 400, code 21220.
"""

from __future__ import annotations

import base64
import itertools
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from callbot.core.call_control import FINAL_CALL_STATUSES, CallUpdate

API_VERSION = "2010-04-01"
NOT_FOUND_CODE = 20404
NOT_IN_PROGRESS_CODE = 21220
AUTH_CODE = 20003


@dataclass(frozen=True, slots=True)
class RestRequest:
    """One request the fake received: the method, the path and the form fields (repeated keys kept)."""

    method: str
    path: str
    form: tuple[tuple[str, str], ...]

    def field(self, name: str) -> str | None:
        return next((v for k, v in self.form if k == name), None)

    def fields(self, name: str) -> list[str]:
        return [v for k, v in self.form if k == name]


@dataclass(slots=True)
class FakeCall:
    """A call as the fake knows it: where it stands and what it was told."""

    sid: str
    to: str = ""
    from_: str = ""
    status: str = "in-progress"
    duration_s: int | None = None  # once it has ended, as Twilio's `duration`
    twiml: str | None = None
    direction: str = "inbound"
    create_fields: dict[str, list[str]] = field(default_factory=dict)
    updates: list[CallUpdate] = field(default_factory=list)


UpdateHook = Callable[[FakeCall, CallUpdate], Awaitable[None]]
CreateHook = Callable[[FakeCall], Awaitable[None]]


class FakeTwilioRest:
    """The fake's state and its ASGI app (`.app`); serve it with `callbot.testing.serving.serve_app`."""

    def __init__(self, account_sid: str = "AC" + "0" * 32, auth_token: str = "fake-auth-token") -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.requests: list[RestRequest] = []
        self.calls: dict[str, FakeCall] = {}
        self.on_update: UpdateHook | None = None
        self.on_create: CreateHook | None = None
        self.fail_next: list[tuple[int, int]] = []  # (HTTP status, Twilio code) for the next requests
        self._sids = (f"CA{n:032x}" for n in itertools.count(secrets.randbits(64) << 32))
        base = f"/{API_VERSION}/Accounts/{{account}}/Calls"
        self.app = Starlette(
            routes=[
                Route(base + ".json", self._create, methods=["POST"]),
                Route(base + "/{call_sid}.json", self._update, methods=["POST"]),
                Route(base + "/{call_sid}.json", self._fetch, methods=["GET"]),
            ]
        )

    def register_call(self, call_sid: str, *, to: str = "", from_: str = "") -> FakeCall:
        """Make an inbound call known, as Twilio knows every call it connected to the voice webhook."""
        call = self.calls.setdefault(call_sid, FakeCall(sid=call_sid, to=to, from_=from_))
        return call

    def updates_for(self, call_sid: str) -> list[CallUpdate]:
        call = self.calls.get(call_sid)
        return list(call.updates) if call else []

    # ----- the routes -----

    async def _refusal(self, request: Request) -> JSONResponse | None:
        if request.path_params["account"] != self.account_sid or not self._authorised(request):
            return _twilio_error(401, AUTH_CODE, "Authenticate")
        if self.fail_next:
            status, code = self.fail_next.pop(0)
            return _twilio_error(status, code, "injected failure")
        return None

    def _authorised(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return False
        same_user = secrets.compare_digest(user, self.account_sid)
        return same_user and secrets.compare_digest(password, self.auth_token)

    async def _record(self, request: Request) -> RestRequest:
        form = await request.form()
        fields = tuple((k, str(v)) for k, v in form.multi_items())
        recorded = RestRequest(request.method, request.url.path, fields)
        self.requests.append(recorded)
        return recorded

    async def _create(self, request: Request) -> JSONResponse:
        recorded = await self._record(request)
        refused = await self._refusal(request)
        if refused is not None:
            return refused
        to, from_ = recorded.field("To"), recorded.field("From")
        if not to or not from_ or not (recorded.field("Twiml") or recorded.field("Url")):
            return _twilio_error(400, 21201, "To, From and Twiml or Url are required")
        fields: dict[str, list[str]] = {}
        for key, value in recorded.form:
            fields.setdefault(key, []).append(value)
        call = FakeCall(
            sid=next(self._sids),
            to=to,
            from_=from_,
            status="queued",
            twiml=recorded.field("Twiml"),
            direction="outbound-api",
            create_fields=fields,
        )
        self.calls[call.sid] = call
        if self.on_create is not None:
            await self.on_create(call)
        return JSONResponse(self._body(call), status_code=201)

    async def _update(self, request: Request) -> JSONResponse:
        recorded = await self._record(request)
        refused = await self._refusal(request)
        if refused is not None:
            return refused
        call = self.calls.get(request.path_params["call_sid"])
        if call is None:
            return _twilio_error(404, NOT_FOUND_CODE, "The requested resource was not found")
        try:
            update = CallUpdate(status=recorded.field("Status"), twiml=recorded.field("Twiml"))
        except ValueError as exc:
            return _twilio_error(400, 21218, str(exc))
        if call.status in FINAL_CALL_STATUSES:
            return _twilio_error(400, NOT_IN_PROGRESS_CODE, "Call is not in-progress. Cannot redirect.")
        call.updates.append(update)
        if update.status is not None:
            call.status = update.status
        else:
            call.twiml = update.twiml
        if self.on_update is not None:
            await self.on_update(call, update)
        return JSONResponse(self._body(call))

    async def _fetch(self, request: Request) -> JSONResponse:
        refused = await self._refusal(request)
        if refused is not None:
            return refused
        call = self.calls.get(request.path_params["call_sid"])
        if call is None:
            return _twilio_error(404, NOT_FOUND_CODE, "The requested resource was not found")
        return JSONResponse(self._body(call))

    def _body(self, call: FakeCall) -> dict[str, object]:
        return {
            "sid": call.sid,
            "account_sid": self.account_sid,
            "to": call.to,
            "from": call.from_,
            "status": call.status,
            "duration": None if call.duration_s is None else str(call.duration_s),
            "direction": call.direction,
            "api_version": API_VERSION,
            "uri": f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{call.sid}.json",
        }


def _twilio_error(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse(
        {
            "code": code,
            "message": message,
            "status": status,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
        },
        status_code=status,
    )
