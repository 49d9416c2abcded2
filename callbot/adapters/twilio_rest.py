"""`CallControl` over Twilio's REST API, with the `twilio` library's asynchronous client.

The base URL is a setting (`CALLBOT_TWILIO_API_URL`) so that tests, the demo and benchmarks
talk to `callbot.testing.fake_twilio_rest` instead of api.twilio.com. The library has no base
URL option; its documented way in is a custom HTTP client whose `request()` may change the URL
(twilio-python's "custom HTTP client" advanced example; docs/call-control.md §1), which is what
`_RebasedHttpClient` does. Library exceptions stop here: callers see `TwilioRestError`/`CallGone`.
"""

from __future__ import annotations

import base64
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from callbot.core.call_control import CallCreate, CallState, CallUpdate, CreatedCall
from callbot.errors import CallGone, SettingsError, TwilioRestError

log = logging.getLogger(__name__)

TWILIO_API_URL = "https://api.twilio.com"
CALL_NOT_FOUND_CODE = 20404


class _RebasedHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]  # twilio ships no types
    """The library's aiohttp client, sending what it would send to api.twilio.com to `api_url`."""

    def __init__(self, api_url: str, timeout_s: float) -> None:
        super().__init__(pool_connections=True, timeout=timeout_s)
        self._api_url = api_url.rstrip("/")

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        **options: Any,
    ) -> Response:
        if url.startswith(TWILIO_API_URL):
            url = self._api_url + url[len(TWILIO_API_URL) :]
        if auth is not None:
            # As an Authorization header: aiohttp deprecates its `auth=` argument (gone in aiohttp 4),
            # which the library's client would otherwise pass on.
            credentials = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            headers = {**(headers or {}), "Authorization": f"Basic {credentials}"}
        return await super().request(method, url, params, data, headers, None, **options)


class TwilioRestCalls:
    """Ends, redirects, places and looks up calls. Build it anywhere; the HTTP session opens on first use
    (aiohttp needs a running loop), and `aclose()` closes it."""

    def __init__(
        self,
        account_sid: str | None,
        auth_token: str | None,
        *,
        api_url: str = TWILIO_API_URL,
        timeout_s: float = 10.0,
    ) -> None:
        if not account_sid or not auth_token:
            raise SettingsError("Twilio's REST API needs TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN")
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._api_url = api_url
        self._timeout_s = timeout_s
        self._http: _RebasedHttpClient | None = None
        self._client: Client | None = None

    def _twilio(self) -> Client:
        if self._client is None:
            self._http = _RebasedHttpClient(self._api_url, self._timeout_s)
            self._client = Client(self._account_sid, self._auth_token, http_client=self._http)
        return self._client

    async def update_call(self, call_sid: str, update: CallUpdate) -> None:
        fields: dict[str, Any] = {}
        if update.status is not None:
            fields["status"] = update.status
        if update.twiml is not None:
            fields["twiml"] = update.twiml
        with _translated(f"updating call {call_sid}"):
            await self._twilio().calls(call_sid).update_async(**fields)

    async def create_call(self, request: CallCreate) -> CreatedCall:
        fields: dict[str, Any] = {"to": request.to, "from_": request.from_, "twiml": request.twiml}
        if request.status_callback:
            fields["status_callback"] = request.status_callback
            fields["status_callback_method"] = "POST"
            if request.status_events:
                fields["status_callback_event"] = list(request.status_events)
        if request.machine_detection:
            fields["machine_detection"] = request.machine_detection
            fields["async_amd"] = "true"
            if request.amd_status_callback:
                fields["async_amd_status_callback"] = request.amd_status_callback
                fields["async_amd_status_callback_method"] = "POST"
        if request.ring_timeout_s is not None:
            fields["timeout"] = request.ring_timeout_s
        with _translated(f"calling {request.to}"):
            call = await self._twilio().calls.create_async(**fields)
        return CreatedCall(call_sid=str(call.sid), status=str(call.status or "queued"))

    async def fetch_call(self, call_sid: str) -> CallState:
        with _translated(f"fetching call {call_sid}"):
            call = await self._twilio().calls(call_sid).fetch_async()
        duration = str(call.duration or "")
        return CallState(
            status=str(call.status or ""), duration_s=int(duration) if duration.isdigit() else None
        )

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
            self._client = None


@contextlib.contextmanager
def _translated(doing: str) -> Iterator[None]:
    """The library's failures as `TwilioRestError` (`CallGone` for a call that has gone)."""
    try:
        yield
    except TwilioRestException as exc:
        message = f"{doing}: Twilio answered {exc.status} (code {exc.code}): {exc.msg}"
        gone = exc.status == 404 or exc.code == CALL_NOT_FOUND_CODE
        error = CallGone if gone else TwilioRestError
        raise error(message, status=exc.status, code=exc.code) from exc
    except (TwilioException, aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise TwilioRestError(f"{doing}: Twilio unreachable: {exc!r}") from exc
