"""Remote MCP tools through the real server: the caller simulator, callbot on loopback and the
fake Realtime server, which lists the declared server's tools and makes the scripted MCP calls
the way OpenAI does (callbot/testing/fake_realtime_mcp.py). callbot never talks to the MCP
server; what it must get right is the session's `mcp` tool (its header secret from the
environment), recording what OpenAI did, and keeping that secret out of everything it writes."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from callbot.caller.simulator import HangUp, Say, SayDuringAssistant, Silence, WaitForAssistant
from callbot.core.conversation import _tool_text
from callbot.core.record import ToolCallEvent, TranscriptEntry
from callbot.core.transcript_text import timeline
from callbot.testing.fake_realtime import Script
from callbot.testing.fake_realtime_state import ScriptedMcpCall
from tests.e2e_helpers import fake_summary_model, running_rig, speech
from tests.test_e2e_ticket import read_ticket, ticket_requests, ticket_rig

DOCS_KEY = "docs-mcp-key-7f3a91c2"
"""What `${DOCS_MCP_KEY}` holds: it goes to OpenAI in the session's `mcp` tool, nowhere else."""
SEARCH = {
    "name": "search_docs",
    "description": "Search the support articles.",
    "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}},
}
DELETE = {"name": "delete_doc", "input_schema": {"type": "object"}}
POLICY = "Refunds are paid within 14 days of the return (policy RF-2291)."
REFUND_LINE = "How long does a refund take?"
LOOKUP = ScriptedMcpCall("docs", "search_docs", {"query": "refund time"}, output=POLICY)
DOCS_SERVER = {
    "type": "mcp",
    "server_label": "docs",
    "server_url": "https://mcp.example.test/mcp",
    "allowed_tools": ["search_docs"],
    "require_approval": "never",
    "headers": {"X-Api-Key": DOCS_KEY},
}
"""The `mcp` tool callbot must declare for `tools_file` below, secret resolved."""


@pytest.fixture
def tools_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("DOCS_MCP_KEY", DOCS_KEY)
    path = tmp_path / "tools.yaml"
    path.write_text(
        "mcp_servers:\n"
        "  - server_label: docs\n"
        "    server_url: https://mcp.example.test/mcp\n"
        "    allowed_tools: [search_docs]\n"
        '    headers: {X-Api-Key: "${DOCS_MCP_KEY}"}\n'
        "    require_approval: never\n"
    )
    return path


def mcp_script(*caller_lines: str, **kwargs: Any) -> Script:
    """The docs server lists two tools (callbot allows one); reply n makes `mcp_calls[n]`."""
    values: dict[str, Any] = {
        "greeting": "Hello, Acme support.",
        "user_transcripts": list(caller_lines),
        "mcp_tools": {"docs": [SEARCH, DELETE]},
        **kwargs,
    }
    return Script(**values)


def turn(seed: int, *, wait_s: float = 20, quiet_ms: int = 1000) -> list[Any]:
    return [Say(speech(1000, seed=seed)), Silence(100), WaitForAssistant(timeout_s=wait_s, quiet_ms=quiet_ms)]


def said(entries: tuple[TranscriptEntry, ...]) -> list[str]:
    return [e.text or "" for e in entries if e.role == "assistant"]


def sent_of(fake_session: Any, kind: str) -> list[dict[str, Any]]:
    return [e for e in fake_session.sent if e["type"] == kind]


async def test_the_session_declares_the_mcp_server_with_its_header_from_the_environment(
    tools_file: Path,
) -> None:
    async with running_rig(mcp_script(), tools_file=tools_file) as rig:
        result = await rig.caller().run([WaitForAssistant(timeout_s=10), HangUp()])
        (session,) = rig.fake.sessions
        assert rig.fake.violations == []
    assert result.violations == []
    (update,) = [e for e in session.received if e["type"] == "session.update"]
    assert update["session"]["tools"] == [DOCS_SERVER]  # no function tools: no Twilio credentials
    # the fake listed the server as OpenAI would: only the allowed tool
    (listed,) = [
        e["item"] for e in sent_of(session, "conversation.item.done") if e["item"]["type"] == "mcp_list_tools"
    ]
    assert [t["name"] for t in listed["tools"]] == ["search_docs"]
    assert [e["item_id"] for e in sent_of(session, "mcp_list_tools.completed")] == [listed["id"]]
    (record,) = rig.observer.ended
    assert record.tool_calls == ()  # a listing is no call
    assert said(record.transcript) == ["Hello, Acme support."]


async def test_an_mcp_answer_is_read_back_and_the_ticket_api_and_review_page_show_it_but_never_the_key(
    tmp_path: Path, tools_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    script = mcp_script(REFUND_LINE, mcp_calls={0: LOOKUP})
    overrides = {"tools_file": tools_file, "admin_password": "review-pw"}
    async with ticket_rig(tmp_path, script, **overrides) as rig:
        caller = rig.caller()
        result = await caller.run([WaitForAssistant(timeout_s=10), *turn(1), HangUp()])
        await rig.settle()
        view = await read_ticket(rig.settings.database_url, caller.call_sid)
        assert view is not None
        async with httpx.AsyncClient(base_url=rig.base_url, trust_env=False) as http:
            api = await http.get(f"/api/tickets/{view.id}", auth=("admin", "review-pw"))
            page = await http.get(f"/tickets/{view.id}", auth=("admin", "review-pw"))
        (session,) = rig.fake.sessions
        assert rig.fake.violations == []
    assert result.violations == []
    (update,) = [e for e in session.received if e["type"] == "session.update"]
    assert update["session"]["tools"] == [DOCS_SERVER]  # OpenAI did get the key
    (done,) = [e for e in sent_of(session, "response.output_item.done") if e["item"]["type"] == "mcp_call"]
    # the ticket: what OpenAI's call did, as it came
    (call,) = view.tool_calls
    assert (call.kind, call.name, call.outcome, call.output, call.error) == (
        "mcp",
        "docs.search_docs",
        "ok",
        POLICY,
        None,
    )
    assert json.loads(call.arguments) == {"query": "refund time"} and call.item_id == done["item"]["id"]
    assert said(view.transcript) == ["Hello, Acme support.", f"Here is what I found: {POLICY}"]
    # ... on the timeline between the question and the answer it came from
    order = [
        ("tool", e.name) if isinstance(e, ToolCallEvent) else (e.role, e.text)
        for e in timeline(view.to_record())
    ]
    assert order == [
        ("assistant", "Hello, Acme support."),
        ("user", REFUND_LINE),
        ("tool", "docs.search_docs"),
        ("assistant", f"Here is what I found: {POLICY}"),
    ]
    # the JSON API and the review page show it
    assert api.status_code == 200 and page.status_code == 200
    (api_call,) = api.json()["tool_calls"]
    assert (api_call["name"], api_call["kind"], api_call["outcome"], api_call["output"]) == (
        "docs.search_docs",
        "mcp",
        "ok",
        POLICY,
    )
    assert "<strong>docs.search_docs</strong> (mcp)" in page.text and POLICY in page.text
    # the ticket model read the call as a System line of the transcript
    (prompt,) = [r["messages"][-1]["content"] for r in ticket_requests(rig.control)]
    assert (
        f"System (tool docs.search_docs, ok): docs.search_docs({call.arguments}) answered {POLICY}" in prompt
    )
    # the key went to OpenAI only: not to the ticket, its model, the API, the page or a log line
    for text in (json.dumps(view.to_json()), prompt, api.text, page.text, caplog.text):
        assert DOCS_KEY not in text
    assert not [r for r in caplog.records if DOCS_KEY in r.getMessage()]
    # callbot's own records carry it in no argument either; the websockets library's DEBUG
    # frame lines hold the session.update frame itself, which they print shortened (above)
    assert not [r for r in caplog.records if r.name.startswith("callbot") and DOCS_KEY in str(r.args)]
    assert "DOCS_MCP_KEY" not in api.text
    logged = {r.name for r in caplog.records}
    assert "callbot.bridge" in logged, logged  # the call's own log lines were captured
    # every MCP event is one callbot knows (none logged as unhandled)
    assert not [r for r in caplog.records if "unhandled Realtime event" in r.getMessage()]


async def test_a_failing_mcp_call_is_an_error_on_the_ticket_and_the_call_goes_on(tools_file: Path) -> None:
    failing = ScriptedMcpCall(
        "docs",
        "search_docs",
        {"query": "refund time"},
        error={"type": "tool_execution_error", "message": "search index offline"},
        say_on_error="Sorry, I cannot look that up right now: {error}.",
    )
    script = mcp_script(
        REFUND_LINE,
        "Then just tell me the opening hours.",
        mcp_calls={0: failing},
        replies=["", "We open at nine."],
    )
    async with running_rig(script, tools_file=tools_file) as rig:
        result = await rig.caller().run([WaitForAssistant(timeout_s=10), *turn(2), *turn(3), HangUp()])
        (session,) = rig.fake.sessions
        assert rig.fake.violations == []
    assert result.violations == [] and result.outcome == "completed"
    assert len(sent_of(session, "response.mcp_call.failed")) == 1
    (record,) = rig.observer.ended
    (call,) = record.tool_calls
    assert (call.kind, call.name, call.outcome, call.output) == ("mcp", "docs.search_docs", "error", None)
    assert json.loads(call.error or "") == {"type": "tool_execution_error", "message": "search index offline"}
    assert said(record.transcript) == [
        "Hello, Acme support.",
        "Sorry, I cannot look that up right now: search index offline.",
        "We open at nine.",  # the call went on
    ]
    assert record.end_reason == "caller hung up"


async def test_the_summary_keeps_the_mcp_answer_and_never_deletes_the_servers_tool_list(
    tools_file: Path,
) -> None:
    """A low trigger folds the first turns, MCP call included, into summaries while the call goes
    on; the tool list stays with the server, so a later MCP call still works (the fake can call
    only tools whose listing is in the conversation)."""
    lines = [REFUND_LINE, "Do you ship to Canada?", "Can I pay by card?", "And gift cards?", "Thanks."]
    second = ScriptedMcpCall(
        "docs", "search_docs", {"query": "gift cards"}, output="Gift cards are final sale (GC-7710)."
    )
    script = mcp_script(
        *lines,
        mcp_calls={0: LOOKUP, 3: second},
        replies=["", "Yes, we ship to Canada.", "Yes, all major cards.", "", "You are welcome."],
    )
    async with (
        fake_summary_model() as summariser,
        running_rig(
            script,
            tools_file=tools_file,
            summariser=summariser,
            summary_enabled=True,
            summary_trigger_tokens=150,
            keep_last_turns=2,
            transcript_wait_ms=500,
        ) as rig,
    ):
        steps: list[Any] = [WaitForAssistant(timeout_s=10, quiet_ms=2000)]
        for n in range(len(lines)):
            steps += turn(20 + n, quiet_ms=600)
        result = await rig.caller().run([*steps, HangUp()])
        (session,) = rig.fake.sessions
        server_items = [dict(item) for item in session.items]
        assert rig.fake.violations == []
    assert result.violations == []
    record = rig.observer.ended[0]
    calls = [
        e["item"] for e in sent_of(session, "response.output_item.done") if e["item"]["type"] == "mcp_call"
    ]
    assert [c["output"] for c in calls] == [POLICY, "Gift cards are final sale (GC-7710)."]
    assert [(c.name, c.outcome) for c in record.tool_calls] == [("docs.search_docs", "ok")] * 2
    # the first MCP call was folded into a summary, which kept its answer as _tool_text renders it
    first_call = calls[0]
    folding = [s for s in record.summaries if first_call["id"] in s.folded_item_ids]
    assert folding, [s.folded_item_ids for s in record.summaries]
    assert _tool_text(first_call) in folding[0].text
    assert "2291" in record.summaries[-1].text  # and the roll-ups keep the fact
    # ... and deleted from the server; the tool list was never deleted, and is there still
    deleted = {e["item_id"] for e in session.received if e["type"] == "conversation.item.delete"}
    (listing,) = [i for i in server_items if i["type"] == "mcp_list_tools"]
    assert first_call["id"] in deleted and listing["id"] not in deleted
    # the second call came after the server had deleted the first: the listing alone carried it
    sent = [(e["type"], e.get("item_id")) for e in session.sent]
    assert sent.index(("conversation.item.deleted", first_call["id"])) < sent.index(
        ("response.mcp_call.completed", calls[1]["id"])
    )
    # every turn is on the ticket, in order
    assert [e.text for e in record.transcript if e.role == "user"] == lines
    assert said(record.transcript)[1] == f"Here is what I found: {POLICY}"


async def test_an_mcp_call_in_a_response_the_caller_talks_over_is_recorded_as_it_came(
    tools_file: Path,
) -> None:
    """OpenAI ran the call before the spoken answer the caller cut short: it happened, so the
    ticket has it with its output, not as skipped, and the call goes on."""
    long_answer = ScriptedMcpCall(
        "docs",
        "search_docs",
        {"query": "refund time"},
        output=POLICY,
        say="Let me read you the whole refund policy, it is quite detailed and has a few parts: {output} "
        "There are exceptions for sale items, for gift cards and for orders shipped abroad.",
    )
    script = mcp_script(
        REFUND_LINE,
        "Sorry, just the short version?",
        mcp_calls={0: long_answer},
        replies=["", "Fourteen days."],
    )
    async with running_rig(script, tools_file=tools_file) as rig:
        result = await rig.caller().run(
            [
                WaitForAssistant(timeout_s=10),
                Say(speech(1000, seed=4)),
                SayDuringAssistant(speech(900, seed=5), after_ms=800),
                Silence(100),
                WaitForAssistant(timeout_s=10),
                HangUp(),
            ]
        )
        (session,) = rig.fake.sessions
        assert rig.fake.violations == []
    assert result.violations == []
    (cancelled,) = [
        e["response"] for e in sent_of(session, "response.done") if e["response"]["status"] == "cancelled"
    ]
    assert [o["type"] for o in cancelled["output"]] == ["mcp_call", "message"]
    assert cancelled["status_details"]["reason"] == "turn_detected"
    (record,) = rig.observer.ended
    (call,) = record.tool_calls
    assert (call.name, call.outcome, call.output, call.error) == ("docs.search_docs", "ok", POLICY, None)
    assert call.item_id == cancelled["output"][0]["id"]
    answer, later = [e for e in record.transcript if e.role == "assistant"][1:]
    assert answer.interrupted and answer.text is not None and "(policy RF-2291)" not in answer.text
    assert later.text == "Fourteen days." and not later.interrupted


async def test_a_server_whose_listing_fails_is_logged_and_never_called(
    tools_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="callbot.call")
    script = mcp_script(REFUND_LINE, mcp_calls={0: LOOKUP}, mcp_list_fails={"docs"})
    async with running_rig(script, tools_file=tools_file) as rig:
        result = await rig.caller().run([WaitForAssistant(timeout_s=10), *turn(6), HangUp()])
        (session,) = rig.fake.sessions
        assert rig.fake.violations == []
    assert result.violations == []
    assert len(sent_of(session, "mcp_list_tools.failed")) == 1 and not sent_of(
        session, "response.mcp_call.completed"
    )
    warned = [r.getMessage() for r in caplog.records if r.name == "callbot.call"]
    assert "listing the tools of MCP server docs failed: the agent cannot use it" in warned
    (record,) = rig.observer.ended
    assert record.tool_calls == ()
    assert said(record.transcript) == ["Hello, Acme support.", "Sorry, I have no tool for that."]
