"""Fuzz cases for Twilio's signed status and AMD callbacks and for the call API `POST /api/calls`.

Each surface has a case type, a Hypothesis strategy, a `send_*` that plays one case over a sync
`httpx.Client`, and a `check_*` for its answer: never a 5xx; a callback whose signature is not
good is refused (403, or 400 for a body that is not a form at all); a signed callback is 204
(recorded), 202 (database down: looked up later) or 400 (not a callback callbot can use), and
a 400 exactly when `parse_status_callback` refuses the fields; the call API without the admin
credentials is 401, and with them 201 (placed, on the fake Twilio REST API), 400 (a request
`call_request` refuses, or a body that is not a JSON object), 429 (too many in flight) or 502.

tests/test_fuzz_callbacks.py runs them against the real app; bench/fault_soak.py against its
replicas (both with the shared e2e token, public URL and admin password).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from hypothesis import strategies as st
from twilio.request_validator import RequestValidator

from callbot.core.call_lifecycle import ANSWERED_BY, CALL_STATUSES, call_request, parse_status_callback
from callbot.errors import InvalidCallRequest
from tests.e2e_helpers import AUTH_TOKEN, PUBLIC_URL
from tests.fuzz_counts import report
from tests.test_fuzz_server import ServerThread

ADMIN = ("admin", "fuzz-secret")
REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")  # callbot/web/calls.py
CALL_SID = re.compile(r"[A-Za-z0-9]{1,64}")  # callbot/core/call_lifecycle.py
STATUS_PATH = "/twilio/status"
AMD_PATH = "/twilio/amd"

# ----------------------------------------------------------------------------- field values

nasty = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "a\x00b",
        "\ud800",
        "x\udfffy",
        "\ufffe\uffff",
        "null",
        "' OR 1=1 --",
        "../../etc/passwd",
        '"><Hangup/>',
        "%00",
        "\r\n\r\n",
        "é" * 70,
        "🙂" * 40,
    ]
)
huge_text = st.integers(min_value=65, max_value=200_000).map(lambda n: "Z" * n)
any_text = st.text(max_size=40) | nasty | huge_text
sid_values = (
    st.builds(lambda n: f"CA{n:032x}", st.integers(min_value=0, max_value=2**128 - 1))
    | st.sampled_from(
        ["CA" + "f" * 32, "CA" + "1" * 64, "CA" + "1" * 65, "CA/../x", "CA?x=1", "CA#x", "CA x"]
    )
    | any_text
)
numbers = st.integers(min_value=0, max_value=10**6).map(str) | st.sampled_from(
    ["-1", "1e3", "٣", "0x10", "9" * 10, "9" * 40, "9" * 5000, " 7", "7 ", "NaN", ""]
)
e164_values = (
    st.sampled_from(["+15551230000", "+4930123456", "anonymous", "client:alice", "sip:x@y"]) | any_text
)


def _with_nasty(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(valid, valid, valid, any_text)


# ----------------------------------------------------------------------------- Twilio callbacks


@dataclass(frozen=True)
class CallbackCase:
    path: str
    body: str  # "form" | "multipart" | "json" | "raw" | "none"
    params: dict[str, str]
    raw: bytes
    content_type: str | None
    signature: str  # "none" | "good" | "bad" | "garbage" | "other-url"
    query: str

    def label(self) -> str:
        shown = {k[:20]: v[:40] for k, v in list(self.params.items())[:8]}
        return (
            f"CallbackCase({self.path} body={self.body} ct={self.content_type!r} sig={self.signature} "
            f"query={self.query[:40]!r} params={shown} raw={self.raw[:40]!r})"
        )


status_fields = st.fixed_dictionaries(
    {},
    optional={
        "CallSid": sid_values,
        "CallStatus": _with_nasty(st.sampled_from([*CALL_STATUSES, "in_progress", "COMPLETED", "answered"])),
        "SequenceNumber": numbers,
        "CallDuration": numbers,
        "AnsweredBy": _with_nasty(st.sampled_from([*ANSWERED_BY, "robot"])),
        "Direction": _with_nasty(st.sampled_from(["inbound", "outbound-api", "outbound-dial"])),
        "From": e164_values,
        "To": e164_values,
        "AccountSid": any_text,
        "Timestamp": any_text,
    },
)
amd_fields = st.fixed_dictionaries(
    {},
    optional={
        "CallSid": sid_values,
        "AnsweredBy": _with_nasty(st.sampled_from([*ANSWERED_BY, "machine_end_other", "robot"])),
        "MachineDetectionDuration": numbers,
        "AccountSid": any_text,
    },
)
extra_fields = st.dictionaries(st.text(min_size=1, max_size=20) | nasty.filter(bool), any_text, max_size=3)
form_content_types = st.sampled_from(
    [
        None,
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=utf-16",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "application/json",
        "text/plain",
        "é/ü; charset=ß",
    ]
)
raw_bodies = (
    st.binary(max_size=300)
    | st.sampled_from(
        [
            b"CallSid=%ZZ&CallStatus=%",
            b"CallSid=CA1&CallSid=CA2",
            b"=&=&&==",
            b"%FF%FE=%C0%AF",
            b"CallSid=%00",
        ]
    )
    | st.integers(min_value=1001, max_value=3000).map(
        lambda n: "&".join(f"f{i}=v" for i in range(n)).encode()
    )
)
queries = st.sampled_from(["", "", "", "a=1", "%ZZ=1", "x=" + "y" * 3000])
signatures = st.sampled_from(["none", "good", "good", "good", "good", "bad", "garbage", "other-url"])
bodies = st.sampled_from(["form", "form", "form", "form", "multipart", "json", "raw", "none"])


def _callback_cases(path: str, fields: st.SearchStrategy[dict[str, str]]) -> st.SearchStrategy[CallbackCase]:
    return st.builds(
        CallbackCase,
        path=st.just(path),
        body=bodies,
        params=st.builds(lambda a, b: {**b, **a}, fields, extra_fields),
        raw=raw_bodies,
        content_type=form_content_types,
        signature=signatures,
        query=queries,
    )


status_cases = _callback_cases(STATUS_PATH, status_fields)
amd_cases = _callback_cases(AMD_PATH, amd_fields)


def _form_safe(params: dict[str, str]) -> dict[str, str]:
    """What can travel in a form at all: a lone surrogate has no UTF-8, so it goes as U+FFFD."""
    return {
        k.encode("utf-8", "replace").decode(): v.encode("utf-8", "replace").decode()
        for k, v in params.items()
    }


def send_callback(http: httpx.Client, case: CallbackCase) -> httpx.Response:
    url = case.path + (f"?{case.query}" if case.query else "")
    params = _form_safe(case.params)
    signed_params = params if case.body in ("form", "multipart") else {}
    headers: dict[str, str] = {}
    validator = RequestValidator(AUTH_TOKEN)
    if case.signature == "good":
        headers["X-Twilio-Signature"] = validator.compute_signature(PUBLIC_URL + url, signed_params)
    elif case.signature == "other-url":
        headers["X-Twilio-Signature"] = validator.compute_signature(
            "https://evil.example" + url, signed_params
        )
    elif case.signature == "bad":
        headers["X-Twilio-Signature"] = "bm9wZQ=="
    elif case.signature == "garbage":
        headers["X-Twilio-Signature"] = "é not base64 at all;" * 10
    kwargs: dict[str, Any] = {}
    if case.body == "form":
        kwargs["data"] = params
    elif case.body == "multipart":
        kwargs["data"] = params
        kwargs["files"] = {"upload": ("x.bin", b"\x00\x01" * 10, "application/octet-stream")}
    elif case.body == "json":
        kwargs["content"] = json.dumps(case.params).encode()
    elif case.body == "raw":
        kwargs["content"] = case.raw
    if case.content_type is not None and case.body in ("json", "raw", "none"):
        headers["Content-Type"] = case.content_type
    encoded = {k.encode(): v.encode("utf-8") for k, v in headers.items()}
    return http.post(url, headers=encoded, **kwargs)


def check_callback_answer(case: CallbackCase, response: httpx.Response, *, db_up: bool = True) -> None:
    """`db_up=False` where the database may be down (the soak): a status callback may be a 202."""
    status = response.status_code
    assert status < 500, f"HTTP {status}: {response.text[:300]}"
    if not (case.signature == "good" and case.body == "form"):
        # not signed over the fields sent (a multipart body adds its file part to them)
        assert status in (400, 403), status
        return
    params = _form_safe(case.params)
    recorded = (202, 204) if not db_up else (204,)
    if case.path == STATUS_PATH:
        try:
            parse_status_callback(params)
        except InvalidCallRequest:
            assert status == 400, f"HTTP {status} for a callback parse_status_callback refuses"
            return
        assert status in recorded, f"HTTP {status}: {response.text[:300]}"
    elif CALL_SID.fullmatch(params.get("CallSid", "")):
        assert status == 204, f"HTTP {status}: {response.text[:300]}"
    else:
        assert status == 400, f"HTTP {status} for an AMD callback without a valid CallSid"


# ----------------------------------------------------------------------------- the call API


@dataclass(frozen=True)
class CallsCase:
    auth: str  # "good" | "none" | "bad-password" | "garbage"
    body: str  # "json" | "raw"
    fields: dict[str, Any]
    raw: bytes
    content_type: str | None

    def label(self) -> str:
        shown = {k[:20]: repr(v)[:60] for k, v in list(self.fields.items())[:6]}
        return (
            f"CallsCase(auth={self.auth} body={self.body} ct={self.content_type!r} fields={shown} "
            f"raw={self.raw[:60]!r})"
        )


def _deep_text(n: int, kind: str) -> bytes:
    return b"[" * n + b"]" * n if kind == "list" else b'{"a":' * n + b"1" + b"}" * n


def _deep(n: int, kind: str) -> Any:
    value: Any = 1
    for _ in range(n):
        value = [value] if kind == "list" else {"a": value}
    return value


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | any_text
)
json_values = st.recursive(
    _json_scalars,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8) | nasty, kids, max_size=3),
    max_leaves=8,
)
to_numbers = st.sampled_from(["+15551230001", "+4930123456", "+15551230001 ", " +15551230001"]) | e164_values
instructions = (
    st.sampled_from(["Remind them of the delivery on Friday.", "", "a\x00b", "\ud800 then text", "é" * 100])
    | any_text
    | st.integers(min_value=3000, max_value=60_000).map(lambda n: "i" * n)
)
contexts = (
    st.dictionaries(st.text(max_size=8) | nasty, json_values, max_size=4)
    | st.sampled_from(
        ['{"order": "4417"}', "{not json", '{"a": "\\u0000"}', '{"a": "\\ud800"}', "[1]", "null"]
    )
    | any_text
    | st.builds(_deep, st.sampled_from([5, 50]), st.sampled_from(["list", "dict"]))
)
request_ids = st.builds(lambda n: f"fuzz-req-{n:08d}", st.integers(min_value=0, max_value=10**8)) | any_text
call_fields = st.fixed_dictionaries(
    {"to": st.one_of(to_numbers, to_numbers, to_numbers, json_values)},
    optional={
        "from": st.one_of(st.sampled_from(["+15550001111", ""]), e164_values, json_values),
        "instructions": st.one_of(instructions, instructions, json_values),
        "context": contexts | json_values,
        "request_id": request_ids | json_values,
        "extra": json_values,
    },
)
raw_call_bodies = (
    st.binary(max_size=200)
    | st.sampled_from(
        [
            b"",
            b"{",
            b"null",
            b"[]",
            b'"to"',
            b'{"to": "+15551230001"',
            b'{"to": 1e999999}',
            b'{"to": NaN}',
            b'{"to": "\\ud800"}',
            b'{"to": "+15551230001", "instructions": "\\u0000"}',
            b'{"to": "+15551230001", "instructions": "\\udfff"}',
            b'{"to": "+15551230001", "context": {"k": "\\ud83d"}}',
            b'{"to": "+15551230001", "context": "{\\"k\\": \\"\\\\u0000\\"}"}',
            b'{"to": "+15551230001"}{"to": "+15551230002"}',
            b"\xef\xbb\xbf{}",
            '{"to": "+15551230001"}'.encode("utf-16"),
            b'{"to": "\xc3\x28"}',
        ]
    )
    | st.integers(min_value=4301, max_value=20_000).map(lambda n: b'{"to": ' + b"9" * n + b"}")
    | st.integers(min_value=4301, max_value=20_000).map(
        lambda n: b'{"to": "+15551230001", "context": {"n": ' + b"9" * n + b"}}"
    )
    | st.builds(_deep_text, st.sampled_from([100, 1500, 50_000]), st.sampled_from(["list", "dict"])).map(
        lambda deep: b'{"to": "+15551230001", "context": ' + deep + b"}"
    )
    | st.integers(min_value=100_000, max_value=2_000_000).map(
        lambda n: b'{"to": "+15551230001", "instructions": "' + b"x" * n + b'"}'
    )
)
calls_cases = st.builds(
    CallsCase,
    auth=st.sampled_from(["good", "good", "good", "good", "none", "bad-password", "garbage"]),
    body=st.sampled_from(["json", "json", "json", "raw"]),
    fields=call_fields,
    raw=raw_call_bodies,
    content_type=st.sampled_from(
        [None, "application/json", "application/json; charset=utf-16", "text/plain"]
    ),
)


def send_calls(http: httpx.Client, case: CallsCase) -> httpx.Response:
    headers: dict[bytes, bytes] = {}
    if case.auth == "good":
        headers[b"Authorization"] = b"Basic " + base64.b64encode(f"{ADMIN[0]}:{ADMIN[1]}".encode())
    elif case.auth == "bad-password":
        headers[b"Authorization"] = b"Basic " + base64.b64encode(b"admin:wrong")
    elif case.auth == "garbage":
        headers[b"Authorization"] = "Basic é***".encode()
    if case.body == "json":
        fields = dict(case.fields)
        rid = fields.get("request_id")
        if isinstance(rid, str) and rid.startswith("fuzz-req-"):
            # a fresh id per case: one placed under the same id would answer for this one
            fields["request_id"] = f"fuzz-req-{uuid.uuid4().hex}"
        content = json.dumps(fields).encode()
    else:
        content = case.raw
    headers[b"Content-Type"] = (case.content_type or "application/json").encode()
    return http.post("/api/calls", content=content, headers=headers)


def expected_call_refusal(case: CallsCase) -> bool:
    """True if `call_request` refuses the case's fields (the answer must be 400)."""
    if case.body != "json":
        return False
    f = case.fields
    try:
        call_request(
            f.get("to"), from_=f.get("from"), instructions=f.get("instructions"), context=f.get("context")
        )
    except InvalidCallRequest:
        return True
    rid = f.get("request_id")
    return rid is not None and not (isinstance(rid, str) and REQUEST_ID.fullmatch(rid))


def check_calls_answer(case: CallsCase, response: httpx.Response, *, db_up: bool = True) -> None:
    """`db_up=False` where the database may be down (the soak): a 503 says so, and cancels the call."""
    status = response.status_code
    if status == 503 and not db_up and "database" in response.text:
        return
    assert status < 500, f"HTTP {status}: {response.text[:300]}"
    if case.auth != "good":
        assert status == 401, status
        return
    assert response.headers["content-type"].startswith("application/json"), response.headers
    answer = response.json()
    if status == 201:
        assert not expected_call_refusal(case), f"placed a call call_request refuses: {answer}"
        assert str(answer["call_sid"]).startswith("CA") and answer["ticket_id"], answer
        return
    assert status in (400, 429), f"HTTP {status}: {answer}"
    assert isinstance(answer.get("error"), str) and answer["error"], answer
    if status == 400 and case.body == "json" and not expected_call_refusal(case):
        raise AssertionError(f"a request call_request accepts was refused: {answer}")


# ----------------------------------------------------------------------------- a database


PG_ADMIN = os.environ.get("CALLBOT_SOAK_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def pg_url(db_name: str) -> str:
    """The server's URL for a database on PG_ADMIN's server."""
    return "postgresql+asyncpg://" + PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0] + "/" + db_name


async def create_database() -> str:
    name = f"fuzz_{uuid.uuid4().hex[:10]}"
    try:
        admin = await asyncpg.connect(PG_ADMIN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        if os.environ.get("CALLBOT_SKIP_POSTGRES") == "1":
            pytest.skip(f"PostgreSQL unreachable and CALLBOT_SKIP_POSTGRES=1: {exc}")
        pytest.fail(f"PostgreSQL at {PG_ADMIN} is unreachable: {exc}", pytrace=False)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(PG_ADMIN, timeout=5)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@contextlib.contextmanager
def server_on_fresh_postgres(workdir: Path, kinds: tuple[str, ...], **kwargs: Any) -> Iterator[ServerThread]:
    """The fuzzers' server (tests/test_fuzz_server.py's `ServerThread`, `kwargs` passed on) on a
    PostgreSQL database of its own, which keeps no NUL in text or JSON; dropped afterwards, and the
    case counts of `kinds` reported."""
    db_name = asyncio.run(create_database())
    srv = ServerThread(workdir, database_url=pg_url(db_name), **kwargs)
    try:
        srv.start()
        yield srv
    finally:
        srv.stop()
        asyncio.run(drop_database(db_name))
        report(kinds)
