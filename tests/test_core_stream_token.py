"""callbot.core.stream_token: the per-call HMAC token the media websocket checks on `start`."""

from __future__ import annotations

import hashlib
import hmac

import core_helpers  # noqa: F401  (puts the checkout on sys.path for a plain `pytest`)
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callbot.core import stream_token

SECRET = b"0123456789abcdef0123456789abcdef"
CALL = "CA1a2b3c4d5e6f70819a2b3c4d5e6f7081"
NOW = 1_760_000_000


def test_minted_token_is_expiry_dot_hex_hmac() -> None:
    token = stream_token.mint(SECRET, CALL, NOW, 120)
    expiry, _, mac = token.partition(".")
    assert expiry == str(NOW + 120)
    assert mac == hmac.new(SECRET, f"{CALL}:{NOW + 120}".encode(), hashlib.sha256).hexdigest()


def test_fresh_token_is_valid_for_its_call() -> None:
    token = stream_token.mint(SECRET, CALL, NOW, 120)
    assert stream_token.check(SECRET, CALL, token, NOW) is None
    assert stream_token.check(SECRET, CALL, token, NOW + 119) is None


def test_token_is_valid_up_to_and_including_its_expiry_second() -> None:
    token = stream_token.mint(SECRET, CALL, NOW, 120)
    assert stream_token.check(SECRET, CALL, token, NOW + 120) is None
    assert stream_token.check(SECRET, CALL, token, NOW + 121) == "stream token expired"


def test_token_for_another_call_is_refused() -> None:
    token = stream_token.mint(SECRET, "CAother", NOW, 120)
    assert stream_token.check(SECRET, CALL, token, NOW) == "stream token does not match the call"


def test_token_minted_with_another_secret_is_refused() -> None:
    token = stream_token.mint(b"another secret", CALL, NOW, 120)
    assert stream_token.check(SECRET, CALL, token, NOW) == "stream token does not match the call"


def test_extending_the_expiry_breaks_the_mac() -> None:
    token = stream_token.mint(SECRET, CALL, NOW, 120)
    _, _, mac = token.partition(".")
    forged = f"{NOW + 100_000}.{mac}"
    assert stream_token.check(SECRET, CALL, forged, NOW + 1000) == "stream token does not match the call"


def test_expired_token_is_refused_even_with_a_valid_mac() -> None:
    token = stream_token.mint(SECRET, CALL, NOW - 1000, 120)
    assert stream_token.check(SECRET, CALL, token, NOW) == "stream token expired"


@pytest.mark.parametrize(
    "token",
    ["", "no-dot-at-all", ".abcdef", "123.", "12a.abcdef", "-5.abcdef", " 12.abcdef"],
    ids=["empty", "no dot", "no expiry", "no mac", "expiry not digits", "negative expiry", "space"],
)
def test_malformed_tokens_are_refused_with_a_reason(token: str) -> None:
    assert stream_token.check(SECRET, CALL, token, NOW) == "malformed stream token"


@pytest.mark.parametrize(
    "token",
    [f"{NOW + 60}.é", f"{NOW + 60}.{'ä' * 64}", "١٢٣.abc", f"{NOW + 60}.\x00"],
    ids=["non-ascii mac", "non-ascii mac of the right length", "arabic-indic digits", "nul"],
)
def test_peer_controlled_garbage_tokens_are_refused_not_raised(token: str) -> None:
    # The token arrives in Twilio's `start.customParameters`, i.e. from whoever opened the
    # websocket: checking it must return a reason, never raise.
    assert stream_token.check(SECRET, CALL, token, NOW) is not None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80) | st.builds("{}.{}".format, st.integers(min_value=0), st.text(min_size=1)))
def test_check_never_raises_and_never_accepts_a_random_token(token: str) -> None:
    assert stream_token.check(SECRET, CALL, token, NOW) is not None
