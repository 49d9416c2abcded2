"""Property-based abuse of Twilio's status and AMD callbacks and of the call API, on PostgreSQL.

The real app (as in tests/test_fuzz_server.py, whose server thread, legitimate calls, error log
and final checks this reuses) with a fake Twilio REST API behind `POST /api/calls` and the AMD
callback's call updates, the admin credentials for the call API, and a fresh PostgreSQL
database: PostgreSQL refuses what SQLite takes (NUL in text), so that is where such input must
be turned away as a 400 rather than fail as a 5xx. Legitimate calls run alongside throughout.

Cases per surface: CALLBOT_FUZZ_STATUS_EXAMPLES (150), CALLBOT_FUZZ_AMD_EXAMPLES (100),
CALLBOT_FUZZ_CALLS_EXAMPLES (150); the counts are printed at the end (`pytest -s`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from callbot.testing.fake_twilio_rest import FakeTwilioRest
from callbot.testing.serving import serve_app
from tests import fuzz_callbacks as fc
from tests.e2e_helpers import AUTH_TOKEN
from tests.fuzz_counts import CASES, KINDS
from tests.test_fuzz_server import ErrorLog, LegitCalls, ServerThread, error_log, legit, settle_and_check

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.filterwarnings("ignore:Generating overly large repr"),
]

STATUS_EXAMPLES = int(os.environ.get("CALLBOT_FUZZ_STATUS_EXAMPLES", "150"))
AMD_EXAMPLES = int(os.environ.get("CALLBOT_FUZZ_AMD_EXAMPLES", "100"))
CALLS_EXAMPLES = int(os.environ.get("CALLBOT_FUZZ_CALLS_EXAMPLES", "150"))
ACCOUNT = "AC" + "6" * 32
FUZZ_SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


__all__ = ["error_log", "legit"]  # the fixtures, re-used (their `server` is this module's)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    rest = FakeTwilioRest(account_sid=ACCOUNT, auth_token=AUTH_TOKEN)

    async def fakes(stack: contextlib.AsyncExitStack) -> dict[str, Any]:
        rest_url = await stack.enter_async_context(serve_app(rest.app))
        return {
            "twilio_account_sid": ACCOUNT,
            "twilio_api_url": rest_url,
            "outbound_from_number": "+15550001111",
            "voicemail_message": "Hello, this is Acme calling. Please call us back.",
            "admin_user": fc.ADMIN[0],
            "admin_password": fc.ADMIN[1],
            "max_concurrent_calls": 10_000,
        }

    workdir = tmp_path_factory.mktemp("fuzz-callbacks")
    with fc.server_on_fresh_postgres(workdir, ("status", "amd", "calls"), fakes=fakes) as srv:
        srv.rest = rest  # type: ignore[attr-defined]
        yield srv


def _fuzz_callbacks(
    server: ServerThread, legit: LegitCalls, error_log: ErrorLog, surface: str, cases: Any, examples: int
) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30, trust_env=False) as http:

        @settings(FUZZ_SETTINGS, max_examples=examples)
        @given(case=cases)
        def fuzz(case: fc.CallbackCase) -> None:
            CASES[surface] += 1
            error_log.current = case.label()
            response = fc.send_callback(http, case)
            KINDS[f"{surface} sig={case.signature} body={case.body} -> HTTP {response.status_code}"] += 1
            fc.check_callback_answer(case, response)

        fuzz()
    error_log.current = f"after the {surface} fuzzing"
    settle_and_check(server, legit, error_log)
    print(f"{surface} callback cases run: {CASES[surface]}")


def test_status_callback_survives_malformed_and_adversarial_requests(
    server: ServerThread, legit: LegitCalls, error_log: ErrorLog
) -> None:
    _fuzz_callbacks(server, legit, error_log, "status", fc.status_cases, STATUS_EXAMPLES)


def test_amd_callback_survives_malformed_and_adversarial_requests(
    server: ServerThread, legit: LegitCalls, error_log: ErrorLog
) -> None:
    _fuzz_callbacks(server, legit, error_log, "amd", fc.amd_cases, AMD_EXAMPLES)


def test_call_api_survives_malformed_and_adversarial_requests(
    server: ServerThread, legit: LegitCalls, error_log: ErrorLog
) -> None:
    rest: FakeTwilioRest = server.rest  # type: ignore[attr-defined]
    with httpx.Client(base_url=server.base_url, timeout=30, trust_env=False) as http:

        @settings(FUZZ_SETTINGS, max_examples=CALLS_EXAMPLES)
        @given(case=fc.calls_cases)
        def fuzz(case: fc.CallsCase) -> None:
            CASES["calls"] += 1
            error_log.current = case.label()
            placed_before = len(rest.calls)
            response = fc.send_calls(http, case)
            KINDS[f"calls auth={case.auth} body={case.body} -> HTTP {response.status_code}"] += 1
            fc.check_calls_answer(case, response)
            if response.status_code == 201:
                sid = response.json()["call_sid"]
                assert sid in rest.calls, "a 201 for a call the Twilio REST API never placed"
            else:
                assert len(rest.calls) == placed_before, "a refused request placed a call all the same"

        fuzz()
    error_log.current = "after the call API fuzzing"
    settle_and_check(server, legit, error_log)
    assert KINDS and any(k.startswith("calls") and k.endswith("HTTP 201") for k in KINDS), (
        "no fuzzed call was ever placed"
    )
    print(f"call API cases run: {CASES['calls']}")
