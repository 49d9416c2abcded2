"""pybase64 stands in for binascii on the audio paths (the delta's decode, the append's and the
Twilio media message's encode): what the core relies on is that it gives binascii's output and
binascii's errors (its strict mode, for the delta), which a new pybase64 release must not
change unnoticed."""

from __future__ import annotations

import binascii

import orjson
import pybase64
from hypothesis import given
from hypothesis import strategies as st

from callbot.core import twilio as tw
from callbot.core.inbound import CallerAudio

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


@given(st.binary(max_size=7000))
def test_encode_is_binascii(data: bytes) -> None:
    assert pybase64.b64encode_as_string(data) == binascii.b2a_base64(data, newline=False).decode("ascii")


@given(st.binary(max_size=7000))
def test_decode_round_trips(data: bytes) -> None:
    assert pybase64.b64decode(binascii.b2a_base64(data, newline=False).decode("ascii")) == data


def _outcome(decode: object, text: str) -> bytes | str:
    try:
        return decode(text)  # type: ignore[operator, no-any-return]
    except binascii.Error:
        return "binascii.Error"
    except ValueError as exc:  # text that is not ASCII
        return f"ValueError: {exc}"


@given(st.text(alphabet=_ALPHABET + " \n!-_.*\x00é", max_size=64))
def test_a_delta_decodes_only_as_strict_binascii_would(text: str) -> None:
    """The delta's decode is strict (`validate=True`): what it accepts, binascii's strict mode
    accepts with the same bytes, and anything else (junk, whitespace, data after the padding,
    characters outside the alphabet, text that is not ASCII) fails with a ValueError, which the
    core logs and drops."""
    got = _outcome(lambda t: pybase64.b64decode(t, validate=True), text)
    if isinstance(got, bytes):
        assert got == binascii.a2b_base64(text, strict_mode=True)
    else:
        assert got == "binascii.Error" or got.startswith("ValueError")


def test_the_core_paths_give_binascii_output() -> None:
    ulaw = bytes(range(256)) * 7
    payload = orjson.loads(tw.encode_media("MZ1", ulaw))["media"]["payload"]
    assert payload == binascii.b2a_base64(ulaw, newline=False).decode("ascii")
    append = CallerAudio._append(ulaw)
    assert append["audio"] == binascii.b2a_base64(ulaw, newline=False).decode("ascii")
