"""Twilio's signed form posts (the voice webhook, the whisper, the status and AMD callbacks):
the form parsed and its `X-Twilio-Signature` checked against the public URL Twilio was given,
not the one seen behind a proxy (docs/protocols.md §3.2)."""

from __future__ import annotations

import logging

from fastapi import Request, Response
from starlette.formparsers import MultiPartException
from twilio.request_validator import RequestValidator

from callbot.settings import Settings

log = logging.getLogger("callbot.web")


async def signed_form(
    request: Request, settings: Settings, path: str, what: str
) -> dict[str, str] | Response:
    """The form's fields, or the answer to give instead: 400 for a body that does not parse
    (Twilio posts url-encoded forms), 403 for a bad or missing signature (`what` names the
    request in the warning logged)."""
    try:
        form = await request.form()
    except (MultiPartException, ValueError):
        # Starlette answers most of these itself; some releases let the parser's ValueError through.
        return Response("malformed form body", status_code=400, media_type="text/plain")
    params = {key: str(value) for key, value in form.items()}
    if settings.validate_twilio_signatures and not _signature_ok(settings, request, path, params):
        log.warning("rejecting a %s with a bad or missing X-Twilio-Signature", what)
        return Response("invalid signature", status_code=403, media_type="text/plain")
    return params


def _signature_ok(settings: Settings, request: Request, path: str, params: dict[str, str]) -> bool:
    signature = request.headers.get("x-twilio-signature")
    if not signature or settings.twilio_auth_token is None or not settings.public_url:
        return False
    url = settings.public_url + path + (("?" + request.url.query) if request.url.query else "")
    validator = RequestValidator(settings.twilio_auth_token.get_secret_value())
    return bool(validator.validate(url, params, signature))
