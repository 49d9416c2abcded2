"""Property-based abuse of the tool path: adversarial model arguments, adversarial tool servers.

Two layers, both against `MisbehavingToolServer` (tests/fuzz_tools.py), which answers anything
from well-formed JSON to invalid UTF-8, 200,000-deep nesting, a 5xx, a wrong Content-Length, a
reset connection or no answer in time:

- the HTTP tool runner itself (CALLBOT_FUZZ_TOOL_RUNNER_EXAMPLES, 200 cases), arguments with
  raw lone surrogates included: every case returns a bounded answer or raises `ToolFailed`
  naming the tool, and the text for the model is a valid `function_call_output`;
- whole calls through the real server (CALLBOT_FUZZ_TOOL_CALLS_EXAMPLES calls, 2 by default,
  each making TOOL_CASES_PER_CALL function calls with fuzzed arguments against one fuzzed
  answer) while legitimate calls run alongside, with test_fuzz_server's invariants: no ERROR
  log, no crash, legitimate calls intact, `/healthz` answers. Each fuzzed function call must end
  on the ticket as ok/error/timeout, its output must reach the model (an `{"error": ...}` object
  for a failure), and the call must go on to its next turn and end as the caller hung up.

The fake model makes a fuzzed call only from its second reply on; the legitimate calls hang up
after their first, so they never meet the fuzzed tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from callbot.adapters.http_tools import HttpToolRunner
from callbot.caller.simulator import CallResult, TwilioCaller
from callbot.core.ticket import TicketStatus
from callbot.core.tool_config import HttpTool
from callbot.errors import ToolFailed
from callbot.testing.fake_realtime import Script
from tests import fuzz_callbacks as fc
from tests import fuzz_tools as ft
from tests.e2e_helpers import AUTH_TOKEN, PUBLIC_URL
from tests.fuzz_counts import CASES, KINDS
from tests.test_fuzz_server import (
    LEGIT_TEXTS,
    ErrorLog,
    LegitCalls,
    ServerThread,
    error_log,
    legit,
    settle_and_check,
)

__all__ = ["error_log", "legit"]  # the fixtures, re-used (their `server` is this module's)

pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")
postgres = pytest.mark.postgres

RUNNER_EXAMPLES = int(os.environ.get("CALLBOT_FUZZ_TOOL_RUNNER_EXAMPLES", "200"))
CALL_EXAMPLES = int(os.environ.get("CALLBOT_FUZZ_TOOL_CALLS_EXAMPLES", "2"))
TOOL_CASES_PER_CALL = 2
FUZZ_SETTINGS = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


# ----------------------------------------------------------------------------- the runner


def test_tool_runner_turns_every_adversarial_answer_into_output_or_a_clear_error(error_log: ErrorLog) -> None:
    loop = asyncio.new_event_loop()
    tool_server = ft.MisbehavingToolServer()
    loop.run_until_complete(tool_server.start())
    runner = HttpToolRunner()
    try:

        @settings(FUZZ_SETTINGS, max_examples=RUNNER_EXAMPLES)
        @given(case=ft.runner_tool_cases)
        def fuzz(case: ft.ToolCase) -> None:
            CASES["tools (runner)"] += 1
            error_log.current = case.label()
            tool_server.answer = case.answer
            tool = HttpTool(
                name=ft.TOOL_NAME,
                description="fuzzed",
                parameters={"type": "object"},
                url=tool_server.base_url + "/lookup",
                method=case.method,
                timeout_s=ft.TOOL_TIMEOUT_S,
            )
            output: str | None = None
            error: str | None = None
            try:
                output = loop.run_until_complete(runner.run(tool, case.arguments))
            except ToolFailed as exc:
                error = str(exc)
            KINDS[f"tools (runner) {case.answer.kind} -> {'ok' if error is None else 'ToolFailed'}"] += 1
            ft.check_tool_output(case, output, error)

        fuzz()
    finally:
        loop.run_until_complete(runner.aclose())
        loop.run_until_complete(tool_server.stop())
        loop.close()
    assert error_log.records == [], error_log.describe()
    print(f"tool runner cases run: {CASES['tools (runner)']}")


# ----------------------------------------------------------------------------- whole calls


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    workdir = tmp_path_factory.mktemp("fuzz-tools")
    tool_server = ft.MisbehavingToolServer()

    async def fakes(stack: contextlib.AsyncExitStack) -> dict[str, Any]:
        await tool_server.start()
        stack.push_async_callback(tool_server.stop)
        tools_file = workdir / "tools.yaml"
        tools_file.write_text(ft.tools_yaml(tool_server.base_url))
        return {"tools_file": tools_file}

    script = Script(
        greeting=LEGIT_TEXTS[0],
        user_transcripts=[LEGIT_TEXTS[1]],
        replies=[LEGIT_TEXTS[2]],
        after_tool=ft.AFTER_TOOL,
    )
    with fc.server_on_fresh_postgres(workdir, ("tools",), script=script, fakes=fakes) as srv:
        srv.tool_server = tool_server  # type: ignore[attr-defined]
        yield srv


def check_tool_call(
    server: ServerThread, result: CallResult, cases: int, outputs: list[dict[str, Any]]
) -> None:
    assert result.outcome == "completed", result.summary()
    assert result.violations == [], result.violations
    deadline = time.monotonic() + 20
    view = server.run(server.store.get_by_call_sid(result.call_sid))
    while (view is None or view.status != TicketStatus.COMPLETE) and time.monotonic() < deadline:
        time.sleep(0.1)  # the ticket is written once the call has ended, not as it ends
        view = server.run(server.store.get_by_call_sid(result.call_sid))
    assert view is not None and view.status == TicketStatus.COMPLETE, view
    assert view.end_reason == "caller hung up", view.end_reason
    calls = [t for t in view.tool_calls if t.name == ft.TOOL_NAME]
    assert len(calls) == cases, [(t.name, t.outcome, t.error) for t in view.tool_calls]
    for call in calls:
        assert call.outcome in ("ok", "error", "timeout"), (call.outcome, call.error)
        assert call.ended_ms is not None, call
        if call.outcome != "ok":
            assert call.error is not None and ft.TOOL_NAME in call.error, call.error
    assert len(outputs) == cases, f"{len(outputs)} function_call_outputs reached the model, not {cases}"
    by_id = {call.call_id: call for call in calls}
    for item in outputs:
        call = by_id[item["call_id"]]
        if call.outcome != "ok":
            assert json.loads(item["output"]) == {"error": call.error}
        else:
            assert item["output"] == call.output
    # the call went on after every tool: each output was read back, then the caller's next turn
    said = [e.text for e in view.transcript if e.role == "assistant"]
    assert said.count(ft.AFTER_TOOL) + said.count("One moment. " + ft.AFTER_TOOL) >= 1, said


@postgres
def test_calls_go_on_whatever_the_model_sends_a_tool_and_the_tool_answers(
    server: ServerThread, legit: LegitCalls, error_log: ErrorLog
) -> None:
    tool_server: ft.MisbehavingToolServer = server.tool_server  # type: ignore[attr-defined]
    seen: set[int] = set()

    # no shrinking: each example is a whole call of several seconds; the failure is shown as found
    @settings(FUZZ_SETTINGS, max_examples=CALL_EXAMPLES, phases=[Phase.explicit, Phase.generate])
    @given(
        arguments=st.lists(ft.argument_texts, min_size=TOOL_CASES_PER_CALL, max_size=TOOL_CASES_PER_CALL),
        answer=ft.answers,
    )
    def fuzz(arguments: list[str], answer: ft.Answer) -> None:
        cases = [ft.ToolCase(a, answer) for a in arguments]
        CASES["tools (calls)"] += len(cases)
        error_log.current = " | ".join(c.label() for c in cases)
        tool_server.answer = answer
        ft.script_tool_cases(server.script, cases)
        caller = TwilioCaller(server.base_url, auth_token=AUTH_TOKEN, public_base_url=PUBLIC_URL)
        result = server.run(caller.run(ft.tool_call_steps(len(cases))), timeout_s=90)
        server.run(server.services.observer.drain())  # type: ignore[union-attr]
        KINDS[f"tools (calls) answer {answer.label[:40]} -> {result.outcome}"] += 1
        check_tool_call(server, result, len(cases), ft.function_call_outputs(server.fake, seen))

    try:
        fuzz()
    finally:
        server.script.function_calls.clear()
    error_log.current = "after the tool fuzzing"
    settle_and_check(server, legit, error_log)
    health = httpx.get(server.base_url + "/healthz", timeout=5)
    assert health.status_code == 200
    print(f"tool cases run in whole calls: {CASES['tools (calls)']}")
