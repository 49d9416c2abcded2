"""Per-call stream tokens: proof that a media stream belongs to a call we answered.

The voice webhook (which Twilio signs) mints `HMAC(secret, call_sid:expiry)` and passes it to
Twilio as a `<Parameter>`; the media websocket refuses a `start` whose token does not match
its call sid or has expired, so nobody can open a stream for a call they did not place
(docs/protocols.md §3.4). Time is an argument: this module never reads a clock.
"""

from __future__ import annotations

import hashlib
import hmac


def mint(secret: bytes, call_sid: str, now_s: int, ttl_s: int) -> str:
    expiry = now_s + ttl_s
    mac = hmac.new(secret, f"{call_sid}:{expiry}".encode(), hashlib.sha256).hexdigest()
    return f"{expiry}.{mac}"


def check(secret: bytes, call_sid: str, token: str, now_s: int) -> str | None:
    """None if the token is valid for this call now, else the reason it is not."""
    expiry_text, _, mac = token.partition(".")
    if not (expiry_text.isascii() and expiry_text.isdigit() and mac.isascii() and mac):
        return "malformed stream token"
    expected = hmac.new(secret, f"{call_sid}:{expiry_text}".encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, mac):
        return "stream token does not match the call"
    if int(expiry_text) < now_s:
        return "stream token expired"
    return None
