"""The agent's tools in the core: the tools file checked, which function calls run, when their
output goes back, and how end_call and transfer_to_human end the stream (core/tools.py)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import core_helpers as h
import pytest
from test_core_call import Call, to_realtime, to_twilio

from callbot.core.actions import Action, EndCall, RunTool, SendRealtime, UpdateCall
from callbot.core.call_control import CallUpdate
from callbot.core.charts import call_marks
from callbot.core.conversation import ConversationState
from callbot.core.realtime import AgentConfig, session_update
from callbot.core.record import CallInfo, CallRecord, SummaryEvent, ToolCallEvent, TranscriptEntry
from callbot.core.record_json import record_from_json, record_to_json
from callbot.core.redaction import redact_record
from callbot.core.summary import SummaryPolicy, plan_summary
from callbot.core.tool_config import ToolsConfig, realtime_tools, tools_config
from callbot.core.tools import APPROVAL_NOT_GIVEN, dial_twiml, transfer_brief, whisper_twiml
from callbot.core.transcript_text import summary_request_text, transcript_as_text
from callbot.errors import ToolsFileError

ORDERS = {
    "name": "lookup_order",
    "description": "Look up an order's status by its number.",
    "parameters": {
        "type": "object",
        "properties": {"order_number": {"type": "string"}},
        "required": ["order_number"],
    },
    "url": "http://127.0.0.1:9/orders",
    "headers": {"Authorization": "Bearer ${ORDERS_API_TOKEN}"},
    "timeout_s": 2,
}
ENV = {"ORDERS_API_TOKEN": "s3cret"}


def config(transfer_to: str | None = "+15557654321", **kwargs: Any) -> ToolsConfig:
    return tools_config({"tools": [ORDERS]}, ENV, transfer_to=transfer_to, **kwargs)


def tool_call(cfg: ToolsConfig | None = None, mode: str = "pcmu") -> Call:
    cfg = cfg or config()
    call = Call(mode, tools=cfg)
    assert call.activate() == []
    return call


# ----- the tools file -----


def test_the_tools_file_resolves_header_variables_and_declares_every_tool() -> None:
    cfg = tools_config(
        {
            "tools": [ORDERS],
            "mcp_servers": [
                {
                    "server_label": "docs",
                    "server_url": "https://mcp.example.test/sse",
                    "allowed_tools": ["search"],
                    "headers": {"X-Key": "${ORDERS_API_TOKEN}"},
                }
            ],
        },
        ENV,
        transfer_to="sip:desk@pbx.example.test",
    )
    tool = cfg.http_tool("lookup_order")
    assert tool is not None and tool.headers == (("Authorization", "Bearer s3cret"),)
    assert (tool.method, tool.timeout_s) == ("POST", 2.0)
    names = [t.get("name") or t.get("server_label") for t in realtime_tools(cfg)]
    assert names == ["lookup_order", "end_call", "transfer_to_human", "docs"]
    mcp = realtime_tools(cfg)[-1]
    assert mcp == {
        "type": "mcp",
        "server_label": "docs",
        "require_approval": "never",
        "server_url": "https://mcp.example.test/sse",
        "allowed_tools": ["search"],
        "headers": {"X-Key": "s3cret"},
    }
    # the session.update carrying them is a valid GA client event
    h.assert_client_event(session_update(AgentConfig(session_tools=tuple(realtime_tools(cfg)))))


def test_built_ins_can_be_switched_off_and_transfer_needs_a_target() -> None:
    cfg = tools_config(None, {}, end_call=False, transfer_to=None)
    assert realtime_tools(cfg) == []
    assert not cfg.offered("end_call") and not cfg.offered("transfer_to_human")
    assert session_update(AgentConfig())["session"].get("tools") is None


@pytest.mark.parametrize(
    ("data", "env", "message"),
    [
        (
            {"tools": [ORDERS]},
            {},
            "tools entry 'lookup_order': header 'Authorization' names the environment variable "
            "ORDERS_API_TOKEN",
        ),
        ({"tools": [{**ORDERS, "url": "ftp://x"}]}, ENV, "tools entry 'lookup_order': `url`"),
        ({"tools": [ORDERS, ORDERS]}, ENV, "tools entry 'lookup_order': the name is used twice"),
        ({"tools": [{**ORDERS, "name": "end_call"}]}, ENV, "tools entry 'end_call': the name is taken"),
        ({"tools": [{**ORDERS, "timeout_s": 0}]}, ENV, "`timeout_s`"),
        ({"tools": [{**ORDERS, "parameters": {"type": "string"}}]}, ENV, "`parameters`"),
        ({"tools": [{**ORDERS, "retries": 3}]}, ENV, "unknown fields retries"),
        ({"tools": [{"description": "x", "url": "http://x"}]}, ENV, "tools entry #1: `name`"),
        (
            {"mcp_servers": [{"server_label": "a", "server_url": "https://x", "require_approval": "always"}]},
            ENV,
            "mcp_servers entry 'a': only `require_approval: never`",
        ),
        ({"mcp_servers": [{"server_label": "a"}]}, ENV, "mcp_servers entry 'a': give `server_url`"),
        ({"tool": []}, ENV, "unknown top-level keys: tool"),
        ([ORDERS], ENV, "must hold an object"),
    ],
)  # fmt: skip
def test_a_bad_entry_is_refused_with_its_name(data: Any, env: dict[str, str], message: str) -> None:
    with pytest.raises(ToolsFileError) as refused:
        tools_config(data, env)
    assert message in str(refused.value)


def test_a_transfer_target_must_be_a_number_or_a_sip_uri() -> None:
    with pytest.raises(ToolsFileError, match="CALLBOT_TRANSFER_TO"):
        tools_config(None, {}, transfer_to="555-1234")
    assert tools_config(None, {}, transfer_to="sip:desk@pbx.example.test").transfer_to


def test_the_dial_twiml_names_the_whisper_and_escapes() -> None:
    assert dial_twiml("+15557654321", "https://bot/twilio/whisper/t?a=1&b=2") == (
        '<Response><Dial><Number url="https://bot/twilio/whisper/t?a=1&amp;b=2">'
        "+15557654321</Number></Dial></Response>"
    )
    assert dial_twiml("sip:desk@pbx", None) == "<Response><Dial><Sip>sip:desk@pbx</Sip></Dial></Response>"
    assert (
        whisper_twiml("Order <4417> & more")
        == "<Response><Say>Order &lt;4417&gt; &amp; more</Say></Response>"
    )


# ----- which calls run -----


def respond_with_call(
    call: Call,
    name: str,
    arguments: str,
    *,
    response: str = "resp_1",
    status: str = "completed",
    item_status: str = "completed",
    reason: str | None = None,
    now: int = 1000,
) -> list[Action]:
    """A response whose second output item is a function call, done with `status`."""
    item = h.function_call_item("item_fc1", name, arguments, call_id="call_1", status=item_status)
    call.realtime_in(h.response_created(response), now)
    call.realtime_in(h.item_added({**item, "status": "in_progress", "arguments": ""}), now + 1)
    out = call.realtime_in(h.output_item_done(response, item), now + 2)
    assert out == []  # never run from the item alone
    call.realtime_in(h.item_done(item), now + 3)
    return call.realtime_in(h.response_done(response, status, reason=reason), now + 4)


def runs(actions: list[Action]) -> list[RunTool]:
    return [a for a in actions if isinstance(a, RunTool)]


def test_a_completed_call_runs_and_its_output_goes_back_with_a_response_create() -> None:
    call = tool_call()
    out = respond_with_call(call, "lookup_order", '{"order_number": "4417"}')
    (run,) = runs(out)
    assert (run.call.call_id, run.call.name, run.tool.name) == ("call_1", "lookup_order", "lookup_order")
    assert run.call.arguments == '{"order_number": "4417"}'
    answer = call.session.tool_result("call_1", '{"status": "shipped"}', None, "ok", 1500)
    events = to_realtime(call._checked(answer))
    assert [e["type"] for e in events] == ["conversation.item.create", "response.create"]
    assert events[0]["item"] == {
        "type": "function_call_output",
        "call_id": "call_1",
        "output": '{"status": "shipped"}',
    }
    (event,) = call.session.tools.events()
    assert (event.outcome, event.output, event.started_ms, event.ended_ms) == (
        "ok",
        '{"status": "shipped"}',
        1004,
        1500,
    )
    assert event.kind == "http"


@pytest.mark.parametrize(
    ("status", "item_status", "reason"),
    [
        ("cancelled", "completed", "turn_detected"),
        ("cancelled", "incomplete", "turn_detected"),
        ("incomplete", "completed", "max_output_tokens"),
    ],
)
def test_a_call_from_a_cut_short_response_never_runs(status: str, item_status: str, reason: str) -> None:
    """Even a function call item marked completed does not run when its response was cancelled
    by a barge-in: that is how another project hung up on a live caller."""
    call = tool_call()
    out = respond_with_call(
        call, "end_call", '{"reason": "done"}', status=status, item_status=item_status, reason=reason
    )
    assert runs(out) == [] and not [a for a in out if isinstance(a, UpdateCall)]
    call.run(3000)
    (event,) = call.session.tools.events()
    assert event.outcome == "skipped" and event.error is not None and event.error.startswith("not run")
    assert call.session.tools.stop_reason is None
    assert call.session.phase == "active"


def test_an_unknown_tool_gets_an_error_output_and_the_call_goes_on() -> None:
    call = tool_call()
    events = to_realtime(respond_with_call(call, "delete_everything", "{}"))
    assert events[0]["type"] == "conversation.item.create"
    assert "no tool named 'delete_everything'" in events[0]["item"]["output"]
    assert events[1]["type"] == "response.create"


def test_a_timeout_is_an_error_output_the_model_can_explain() -> None:
    call = tool_call()
    respond_with_call(call, "lookup_order", "{}")
    events = to_realtime(
        call._checked(call.session.tool_result("call_1", None, "no answer within 2 s", "timeout", 3100))
    )
    assert json.loads(events[0]["item"]["output"]) == {"error": "no answer within 2 s"}
    assert call.session.tools.events()[0].outcome == "timeout"


def test_a_result_while_a_response_is_active_waits_for_it_to_finish() -> None:
    call = tool_call()
    respond_with_call(call, "lookup_order", "{}")
    call.realtime_in(h.response_created("resp_2"), 1100)  # the model speaks on meanwhile
    early = to_realtime(call._checked(call.session.tool_result("call_1", '{"ok": 1}', None, "ok", 1200)))
    assert [e["type"] for e in early] == ["conversation.item.create"]  # no response.create yet
    later = to_realtime(call.realtime_in(h.response_done("resp_2"), 1300))
    assert [e["type"] for e in later] == ["response.create"]


def test_a_result_while_the_caller_speaks_is_answered_by_the_response_their_turn_makes() -> None:
    call = tool_call()
    respond_with_call(call, "lookup_order", "{}")
    call.realtime_in(h.speech_started("item_u2", 1000), 1100)
    early = to_realtime(call._checked(call.session.tool_result("call_1", '{"ok": 1}', None, "ok", 1200)))
    assert [e["type"] for e in early] == ["conversation.item.create"]
    call.realtime_in(h.speech_stopped("item_u2", 1500), 1300)
    assert to_realtime(call.tick(1400)) == []  # within the grace: the server's own response comes
    call.realtime_in(h.response_created("resp_3"), 1500)  # it sees the output
    call.realtime_in(h.response_done("resp_3"), 2500)
    assert "response.create" not in [e["type"] for e in to_realtime(call.run(5000))]


def test_a_refused_response_create_is_sent_again_after_the_active_one() -> None:
    call = tool_call()
    respond_with_call(call, "lookup_order", "{}")
    sent = to_realtime(call._checked(call.session.tool_result("call_1", "{}", None, "ok", 1200)))
    reply_id = sent[-1]["event_id"]
    call.realtime_in(h.response_created("resp_vad"), 1201)
    call.realtime_in(
        h.error("conversation_already_has_active_response", "busy", client_event_id=reply_id), 1202
    )
    again = to_realtime(call.realtime_in(h.response_done("resp_vad"), 1500))
    assert [e["type"] for e in again] == ["response.create"]


def test_a_caller_hanging_up_mid_tool_loses_nothing() -> None:
    call = tool_call()
    respond_with_call(call, "lookup_order", "{}")
    assert [type(a) for a in call.twilio_in(h.tw_stop(), 1500)] == [EndCall]
    assert call.session.end_reason == "caller hung up"
    (pending,) = call.session.tools.events(now_ms=1500)
    assert (pending.outcome, pending.error) == ("error", "the call ended before the tool answered")
    # the answer still arrives (the bridge waits for it): recorded, nothing sent
    assert call.session.tool_result("call_1", '{"late": true}', None, "ok", 1800) == []
    (done,) = call.session.tools.events(now_ms=1900)
    assert (done.outcome, done.output, done.ended_ms) == ("ok", '{"late": true}', 1800)


def test_tool_items_are_context_for_the_summary_but_not_turns_of_the_ticket() -> None:
    call = tool_call()
    respond_with_call(call, "lookup_order", '{"order_number": "4417"}')
    output = {
        "id": "item_out1",
        "object": "realtime.item",
        "type": "function_call_output",
        "call_id": "call_1",
        "output": '{"eta": "Friday"}',
    }
    call.realtime_in(h.item_added(output, "item_fc1"), 1600)
    conv = call.session.conversation
    assert [t.text for t in conv.context_turns()] == [
        '[The agent called the tool lookup_order with {"order_number": "4417"}]',
        '[The tool answered: {"eta": "Friday"}]',
    ]
    assert conv.transcript() == ()


# ----- end_call and transfer -----


def goodbye_then(call: Call, name: str, arguments: str) -> list[Action]:
    """The agent says a goodbye (400 ms of audio) and calls `name` in the same response."""
    call.realtime_in(h.response_created("resp_bye"), 1000)
    call.realtime_in(h.item_added(h.assistant_audio_item("item_bye")), 1001)
    out = call.realtime_in(h.audio_delta("resp_bye", "item_bye", b"\x55" * 3200), 1002)
    out += call.realtime_in(h.audio_done("resp_bye", "item_bye"), 1003)
    item = h.function_call_item("item_fc9", name, arguments, call_id="call_9")
    out += call.realtime_in(h.output_item_done("resp_bye", item), 1004)
    out += call.realtime_in(h.response_done("resp_bye"), 1005)
    return out


def updates(actions: list[Action]) -> list[UpdateCall]:
    return [a for a in actions if isinstance(a, UpdateCall)]


def test_end_call_hangs_up_only_after_twilio_echoed_the_goodbyes_last_mark() -> None:
    call = tool_call()
    out = goodbye_then(call, "end_call", '{"reason": "the caller said goodbye"}')
    assert updates(out) == []
    out = call.run(1300)  # the goodbye is still playing (400 ms from 1002)
    assert updates(out) == [] and to_twilio(out)
    out = call.run(1600)
    (update,) = updates(out)
    assert update.update == CallUpdate(status="completed")
    assert call.twilio.pending == [] and call.twilio.heard_bytes == call.twilio.received_bytes
    assert call.twilio.clears == 0
    # Twilio then stops the stream: the expected end, on the ticket with the agent's reason
    assert [type(a) for a in call.twilio_in(h.tw_stop(), 1700)] == [EndCall]
    assert call.session.end_reason == "agent ended the call: the caller said goodbye"
    (event,) = call.session.tools.events()
    assert (event.kind, event.outcome, event.output) == ("builtin", "ok", "the call was ended")


def test_a_caller_talking_over_the_goodbye_calls_the_hang_up_off() -> None:
    call = tool_call()
    goodbye_then(call, "end_call", '{"reason": "done"}')
    call.run(1100)
    out = call.realtime_in(h.speech_started("item_u9", 1100), 1120)
    assert {"event": "clear", "streamSid": h.STREAM_SID} in to_twilio(out)
    told = [e for e in to_realtime(out) if e["type"] == "conversation.item.create"]
    assert told and "the caller spoke" in told[0]["item"]["output"]
    assert updates(call.run(4000)) == []
    assert call.session.tools.events()[0].outcome == "error"
    assert call.session.phase == "active"


def test_transfer_dials_the_target_with_a_whisper_and_the_stop_is_expected() -> None:
    call = tool_call()
    call.session.tools.whisper_url = "https://bot.example.test/twilio/whisper/tok123"
    user = h.user_audio_item("item_u1")
    call.realtime_in(h.item_added(user), 500)
    call.realtime_in(
        h.input_transcription_completed("item_u1", "My order 4417 is late, get me a person."), 600
    )
    goodbye_then(call, "transfer_to_human", '{"reason": "order 4417 is late"}')
    (update,) = updates(call.run(1600))
    assert update.update == CallUpdate(
        twiml='<Response><Dial><Number url="https://bot.example.test/twilio/whisper/tok123">'
        "+15557654321</Number></Dial></Response>"
    )
    assert update.brief is not None
    assert update.brief.startswith("Transferred call from +15551230000. They need: order 4417 is late.")
    assert "My order 4417 is late" in update.brief
    call.twilio_in(h.tw_stop(), 1700)
    assert call.session.end_reason == "transferred to a human (+15557654321): order 4417 is late"


def test_a_refused_transfer_tells_the_model_and_the_call_goes_on() -> None:
    call = tool_call()
    goodbye_then(call, "transfer_to_human", '{"reason": "x"}')
    (update,) = updates(call.run(1600))
    out = call._checked(call.session.call_update_failed(update.call_id, "Twilio answered 400", 1700))
    events = to_realtime(out)
    assert "Twilio answered 400" in events[0]["item"]["output"] and events[1]["type"] == "response.create"
    call.twilio_in(h.tw_stop(), 1800)
    assert call.session.end_reason == "caller hung up"
    assert call.session.tools.events()[0].outcome == "error"


def test_no_built_in_runs_when_it_was_not_offered() -> None:
    call = tool_call(config(transfer_to=None, end_call=False))
    out = goodbye_then(call, "end_call", "{}")
    assert updates(call.run(2000) + out) == []
    sent = [
        a.event for a in out if isinstance(a, SendRealtime) and a.event["type"] == "conversation.item.create"
    ]
    assert "no tool named 'end_call'" in sent[0]["item"]["output"]


# ----- on the ticket -----


def _record_with_tools() -> CallRecord:
    return CallRecord(
        info=CallInfo(call_sid="CA1", stream_sid="MZ1", from_number="+15551230000"),
        started_at=datetime(2026, 12, 7, 9, 0, tzinfo=UTC),
        transcript=(
            TranscriptEntry("item_u1", "user", "Where is my order 4417?", started_ms=3000, ended_ms=4000),
            TranscriptEntry("item_a1", "assistant", "It shipped; tracking JD0146000038.", started_ms=6000),
        ),
        tool_calls=(
            ToolCallEvent(
                "call_1",
                "item_f1",
                "lookup_order",
                '{"order_number": "4417", "card": "4111 1111 1111 1111"}',
                output='{"status": "shipped", "tracking": "JD0146000038"}',
                started_ms=4500,
                ended_ms=5100,
            ),
            ToolCallEvent(
                "call_2",
                "item_f2",
                "end_call",
                "{}",
                error="not run: cancelled",
                outcome="skipped",
                started_ms=7000,
                ended_ms=7000,
                kind="builtin",
            ),
        ),
    )


def test_tool_calls_sit_in_the_timeline_between_the_turns_and_reach_the_ticket_summariser() -> None:
    record = _record_with_tools()
    lines = transcript_as_text(record).splitlines()
    assert lines[0].startswith("[00:03-00:04] Caller: Where is my order 4417?")
    assert lines[1] == (
        '[00:04-00:05] System (tool lookup_order, ok): lookup_order({"order_number": "4417", '
        '"card": "4111 1111 1111 1111"}) answered {"status": "shipped", "tracking": "JD0146000038"}'
    )
    assert lines[2].startswith("[00:06] Assistant: It shipped")
    assert lines[3] == "[00:07] System (tool end_call, skipped): end_call({}) failed: not run: cancelled"
    assert '"tracking": "JD0146000038"' in summary_request_text(record)


def test_tool_calls_survive_json_and_pass_the_redaction() -> None:
    record = _record_with_tools()
    assert record_from_json(json.loads(json.dumps(record_to_json(record)))) == record
    old = record_to_json(record)
    del old["tool_calls"]  # a record stored before issue 15
    assert record_from_json(old).tool_calls == ()
    redacted = redact_record(record, [r"JD\d+"])
    call = redacted.tool_calls[0]
    assert "4111" not in call.arguments and "JD0146000038" not in (call.output or "")
    assert call.name == "lookup_order" and call.outcome == "ok"


_MCP = {"server_label": "docs", "server_url": "https://mcp.example.test"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tools": {"name": "x"}}, "`tools` in the tools file must be a list"),
        ({"tools": ["lookup"]}, "tools entry #1: must be an object"),
        ({"tools": [{**ORDERS, "description": " "}]}, "`description` must be a non-empty string"),
        (
            {"tools": [{**ORDERS, "parameters": {"type": "object", "properties": []}}]},
            "`parameters.properties`",
        ),
        ({"tools": [{**ORDERS, "method": "TRACE"}]}, "`method` must be one of GET, POST"),
        ({"tools": [{**ORDERS, "headers": ["a"]}]}, "`headers` must be an object of strings"),
        ({"tools": [{**ORDERS, "headers": {"X-Count": 3}}]}, "header 'X-Count' must be a string"),
        ({"mcp_servers": ["docs"]}, "mcp_servers entry #1: must be an object"),
        ({"mcp_servers": [{**_MCP, "tools": []}]}, "mcp_servers entry 'docs': unknown fields tools"),
        ({"mcp_servers": [{**_MCP, "server_label": "a b"}]}, "`server_label` must be 1-64"),
        (
            {"mcp_servers": [{**_MCP, "server_url": "http://plain"}]},
            "must be an https:// URL OpenAI can reach",
        ),
        ({"mcp_servers": [{**_MCP, "allowed_tools": "search"}]}, "`allowed_tools` must be a list"),
        ({"mcp_servers": [{**_MCP, "server_description": 7}]}, "`server_description` must be a string"),
        ({"mcp_servers": [{**_MCP, "authorization": 7}]}, "`authorization` must be a string"),
        ({"mcp_servers": [_MCP, _MCP]}, "mcp_servers: a server_label is used twice"),
    ],
)
def test_more_bad_entries_are_refused_with_what_is_wrong(data: Any, message: str) -> None:
    with pytest.raises(ToolsFileError) as refused:
        tools_config(data, ENV)
    assert message in str(refused.value)


def test_an_empty_tools_list_and_an_mcp_authorization_from_the_environment() -> None:
    cfg = tools_config(
        {"tools": None, "mcp_servers": [{**_MCP, "authorization": "${ORDERS_API_TOKEN}"}]}, ENV
    )
    assert cfg.http == () and cfg.mcp[0]["authorization"] == "s3cret"


def test_an_mcp_call_is_recorded_and_kept_as_context() -> None:
    call = tool_call()
    item = {
        "id": "item_mcp1",
        "type": "mcp_call",
        "server_label": "docs",
        "name": "search",
        "arguments": '{"q": "refunds"}',
        "output": "Refunds take 5 days.",
    }
    call.realtime_in(h.item_added(item), 900)
    call.realtime_in(h.output_item_done("resp_m", item), 950)
    failed = {
        **item,
        "id": "item_mcp2",
        "output": None,
        "error": {"type": "http_error", "code": 502, "message": "x"},
    }
    call.realtime_in(h.output_item_done("resp_m", failed), 960)
    ok, bad = call.session.tools.events()
    assert (ok.kind, ok.name, ok.outcome, ok.output) == ("mcp", "docs.search", "ok", "Refunds take 5 days.")
    assert bad.outcome == "error" and bad.error is not None and "http_error" in bad.error
    (turn,) = call.session.conversation.context_turns()
    assert turn.text == "[The agent called docs.search; it answered: Refunds take 5 days.]"
    # an MCP server's tool list is no context a summary needs
    listing = {"id": "item_l1", "type": "mcp_list_tools", "server_label": "docs", "tools": []}
    call.realtime_in(h.item_added(listing), 970)
    assert call.session.conversation.get("item_l1") is None


def _mcp_turn(
    call: Call, final: dict[str, Any], *, at: int = 1000, status: str = "completed"
) -> list[Action]:
    """A caller line, then one response as OpenAI sends an MCP call in it: the `mcp_call` item and
    its progress events first, then the spoken answer (tests/test_fake_realtime.py has the order)."""
    user = h.user_text_item(f"item_u{at}", "How long do refunds take?")
    out = call.realtime_in(h.item_added(user), at)
    out += call.realtime_in(h.item_done(user), at + 1)
    rid, mcp_id, answer_id = f"resp_{at}", str(final["id"]), f"item_a{at}"
    out += call.realtime_in(h.response_created(rid), at + 2)
    pending = {k: v for k, v in final.items() if k not in ("output", "error")}
    out += call.realtime_in(h.item_added({**pending, "arguments": ""}, user["id"]), at + 3)
    in_response = {"output_index": 0, "response_id": rid}
    out += call.realtime_in(
        h.mcp_event("response.mcp_call_arguments.delta", mcp_id, delta="{", **in_response)
    )
    out += call.realtime_in(
        h.mcp_event("response.mcp_call_arguments.done", mcp_id, arguments=final["arguments"], **in_response)
    )
    out += call.realtime_in(h.mcp_event("response.mcp_call.in_progress", mcp_id, output_index=0), at + 4)
    ended = "response.mcp_call.failed" if final.get("error") else "response.mcp_call.completed"
    out += call.realtime_in(h.mcp_event(ended, mcp_id, output_index=0), at + 704)  # the server took 700 ms
    out += call.realtime_in(h.output_item_done(rid, final, 0), at + 705)
    out += call.realtime_in(h.item_done(final, user["id"]), at + 705)
    out += call.realtime_in(h.item_added(h.assistant_audio_item(answer_id), mcp_id), at + 706)
    out += call.realtime_in(h.audio_delta(rid, answer_id, b"\x55" * 1600), at + 707)
    spoken = h.assistant_audio_item(answer_id, "Refunds take five days.", "completed")
    out += call.realtime_in(h.transcript_done(rid, answer_id, "Refunds take five days."), at + 708)
    out += call.realtime_in(h.item_done(spoken, mcp_id), at + 708)
    out += call.realtime_in(h.response_done(rid, status), at + 709)
    return out


def test_an_mcp_turn_is_only_known_events_callbot_answers_nothing_and_the_call_sits_between_its_turns() -> (
    None
):
    cfg = tools_config({"mcp_servers": [{**_MCP, "allowed_tools": ["search"]}]}, ENV)
    call = tool_call(cfg)
    listing = h.mcp_list_item("item_l1", "docs", "search")
    out = call.realtime_in(h.mcp_event("mcp_list_tools.in_progress", "item_l1"), 500)
    out += call.realtime_in(h.item_added(listing), 501)
    out += call.realtime_in(h.item_done(listing), 502)
    out += call.realtime_in(h.mcp_event("mcp_list_tools.completed", "item_l1"), 503)
    final = h.mcp_call_item("item_m1", "docs", "search", '{"q": "refunds"}', output="Refunds take 5 days.")
    out += _mcp_turn(call, final)
    session = call.session
    # OpenAI ran the call: callbot sends nothing back (no output item, no response.create)
    assert [e["type"] for e in to_realtime(out)] == []
    assert (session.stats.unknown_realtime, session.stats.invalid_realtime) == (0, 0)
    (event,) = session.tools.events(now_ms=3000)
    assert (event.kind, event.name, event.arguments, event.output, event.outcome) == (
        "mcp",
        "docs.search",
        '{"q": "refunds"}',
        "Refunds take 5 days.",
        "ok",
    )
    # timed from OpenAI's start of the call to its finished item: the ticket's duration
    assert (event.started_ms, event.ended_ms, event.duration_ms) == (1004, 1705, 701)
    record = CallRecord(
        info=CallInfo(call_sid="CA1", stream_sid="MZ1"),
        started_at=datetime(2026, 12, 7, 9, 0, tzinfo=UTC),
        transcript=session.conversation.transcript(),
        tool_calls=session.tools.events(now_ms=3000),
    )
    lines = transcript_as_text(record).splitlines()
    assert [line.split("] ", 1)[1].split(":", 1)[0] for line in lines] == [
        "Caller",
        "System (tool docs.search, ok)",
        "Assistant",
    ]
    assert lines[1].endswith('docs.search({"q": "refunds"}) answered Refunds take 5 days.')
    assert session.conversation.get("item_l1") is None  # the tool list is no turn and no context


def test_a_failed_mcp_listing_is_logged_naming_the_server(caplog: pytest.LogCaptureFixture) -> None:
    call = tool_call(tools_config({"mcp_servers": [_MCP]}, ENV))
    listing = h.mcp_list_item("item_l1", "docs")
    call.realtime_in(h.mcp_event("mcp_list_tools.in_progress", "item_l1"), 500)
    call.realtime_in(h.item_added(listing), 501)
    with caplog.at_level("WARNING", logger="callbot.call"):
        assert call.realtime_in(h.mcp_event("mcp_list_tools.failed", "item_l1"), 502) == []
        assert call.realtime_in(h.mcp_event("mcp_list_tools.failed", "item_l9"), 503) == []
    assert [r.getMessage() for r in caplog.records] == [
        "listing the tools of MCP server docs failed: the agent cannot use it",
        "listing the tools of MCP server (unknown; listing item item_l9) failed: the agent cannot use it",
    ]
    assert call.session.phase == "active" and call.session.stats.unknown_realtime == 0


def test_an_mcp_call_in_a_response_the_caller_cut_short_is_recorded_as_it_came() -> None:
    """OpenAI ran it before the speech the caller talked over: it happened, it is not skipped."""
    call = tool_call(tools_config({"mcp_servers": [_MCP]}, ENV))
    final = h.mcp_call_item("item_m1", "docs", "search", '{"q": "refunds"}', output="Refunds take 5 days.")
    _mcp_turn(call, final, status="cancelled")
    (event,) = call.session.tools.events(now_ms=3000)
    assert (event.outcome, event.output, event.error) == ("ok", "Refunds take 5 days.", None)


def test_an_mcp_approval_request_is_noted_on_the_ticket_and_approved_by_nobody(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """callbot declares `require_approval: never`, so none should come; if one does, it is not
    answered (OpenAI then runs nothing) and the ticket says why the tool did not run."""
    call = tool_call(tools_config({"mcp_servers": [_MCP]}, ENV))
    request = h.mcp_approval_item("item_ap1", "docs", "delete_doc", '{"id": 7}')
    with caplog.at_level("WARNING", logger="callbot.call"):
        out = call.realtime_in(h.response_created("resp_ap"), 900)
        out += call.realtime_in(h.item_added(request), 901)
        out += call.realtime_in(h.output_item_done("resp_ap", request, 0), 902)
        out += call.realtime_in(h.item_done(request), 902)
        out += call.realtime_in(h.response_done("resp_ap"), 903)
    assert to_realtime(out) == []  # no mcp_approval_response: nothing is approved
    (event,) = call.session.tools.events(now_ms=2000)
    assert (event.kind, event.name, event.arguments, event.outcome) == (
        "mcp",
        "docs.delete_doc",
        '{"id": 7}',
        "skipped",
    )
    assert event.error == APPROVAL_NOT_GIVEN and (event.started_ms, event.ended_ms) == (901, 901)
    assert [r.getMessage() for r in caplog.records] == [
        "an MCP server asked for approval of delete_doc; callbot approves nothing"
    ]
    record = CallRecord(
        info=CallInfo(call_sid="CA1", stream_sid="MZ1"),
        started_at=datetime(2026, 12, 7, 9, 0, tzinfo=UTC),
        tool_calls=call.session.tools.events(now_ms=2000),
    )
    assert record_from_json(record_to_json(record)).tool_calls == record.tool_calls
    assert transcript_as_text(record) == (
        "[00:00] System (tool docs.delete_doc, skipped): "
        f'docs.delete_doc({{"id": 7}}) failed: {APPROVAL_NOT_GIVEN}'
    )
    assert call.session.conversation.get("item_ap1") is None and call.session.phase == "active"


def test_late_duplicate_and_unknown_answers_change_nothing() -> None:
    call = tool_call()
    respond_with_call(call, "lookup_order", "{}")
    assert call.session.tool_result("call_1", "{}", None, "ok", 1200) != []
    assert call.session.tool_result("call_1", '{"again": 1}', None, "ok", 1300) == []  # answered once
    assert call.session.tool_result("call_nope", "{}", None, "ok", 1300) == []
    assert call.session.call_update_failed("call_nope", "x", 1400) == []
    assert call.session.tools.events()[0].output == "{}"


def test_a_second_ending_and_bad_built_in_arguments_are_handled() -> None:
    call = tool_call()
    goodbye_then(call, "end_call", "not json")
    item = h.function_call_item("item_fc10", "transfer_to_human", "{}", call_id="call_10")
    call.realtime_in(h.response_created("resp_again"), 1010)
    call.realtime_in(h.output_item_done("resp_again", item), 1011)
    out = call.realtime_in(h.response_done("resp_again"), 1012)
    told = [e for e in to_realtime(out) if e["type"] == "conversation.item.create"]
    assert "already being ended" in told[0]["item"]["output"]
    (update,) = updates(call.run(1600))
    assert update.update.status == "completed"
    assert call.session.tools.stop_reason == "agent ended the call: no reason given"
    # an answer arriving once the call is being ended is only recorded
    respond_later = call.session.tools
    assert respond_later.result("call_10", "{}", None, "ok", call.session._moment(1700)) == []


def test_an_ending_the_call_never_reached_is_skipped_and_the_brief_uses_the_latest_summary() -> None:
    call = tool_call()
    goodbye_then(call, "end_call", '{"reason": "bye"}')
    call.twilio_in(h.tw_stop(), 1100)  # the caller hung up during the goodbye
    (event,) = call.session.tools.events(now_ms=1100)
    assert (event.outcome, event.error) == ("skipped", "not done: the call ended first")
    conv = ConversationState()
    conv.summaries.append(
        SummaryEvent("summary_0001", 100, "Maria Chen, internet down since Monday.", 500, 4, ())
    )
    brief = transfer_brief(None, conv, "")
    assert brief == "Transferred call from an unknown number. So far: Maria Chen, internet down since Monday."
    conv.summaries.append(SummaryEvent("summary_0002", 200, "x" * 900, 500, 4, ()))
    assert len(transfer_brief(None, conv, "")) == 600


def test_the_in_call_summary_sees_what_a_tool_answered() -> None:
    call = tool_call()
    respond_with_call(call, "lookup_order", '{"order_number": "4417"}')
    output = {
        "id": "item_out1",
        "object": "realtime.item",
        "type": "function_call_output",
        "call_id": "call_1",
        "output": '{"tracking": "JD0146000038"}',
    }
    call.realtime_in(h.item_added(output, "item_fc1"), 1600)
    call.realtime_in(h.item_done(output, "item_fc1"), 1601)
    for n in range(3):  # later turns, so the tool's items are old enough to fold
        user = h.user_text_item(f"item_t{n}", f"line {n}")
        call.realtime_in(h.item_added(user), 1700 + 10 * n)
        call.realtime_in(h.item_done(user), 1705 + 10 * n)
    policy = SummaryPolicy(enabled=True, trigger_tokens=100, keep_last_turns=2)
    conv = call.session.conversation
    conv.usage = replace(conv.usage, last_context_tokens=500)
    request = plan_summary(conv, policy, 5000, {}, 1)
    assert request is not None
    assert ("system", '[The tool answered: {"tracking": "JD0146000038"}]') in request.lines
    assert "item_out1" in request.folded_item_ids


def test_each_tool_call_is_a_mark_on_the_context_chart() -> None:
    marks = [m for m in call_marks(_record_with_tools()) if m.kind == "tool"]
    assert [(m.at_ms, m.label) for m in marks] == [
        (4500, "tool lookup_order: ok in 0.6 s"),
        (7000, "tool end_call: skipped in 0.0 s"),
    ]
