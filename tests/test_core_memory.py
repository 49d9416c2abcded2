"""Returning callers in the core: the number policy, the memory message, and the memory item as
conversation state (before the greeting, kept by summaries, restored on reconnect)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import core_helpers as h
import pytest
from test_summary_policy import (
    TWILIO_START,
    Rig,
    ev_item_added,
    ev_item_done,
    ev_session_updated,
    realtime_in,
    requests_in,
)

from callbot.core import realtime_events as rte
from callbot.core import twilio as tw
from callbot.core.actions import ConnectRealtime, SendRealtime
from callbot.core.call import CallConfig, CallSession
from callbot.core.memory import (
    GREETING_HINT,
    MEMORY_FOOTER,
    MEMORY_HEADER,
    MEMORY_ITEM_ID,
    EarlierCall,
    MemoryPolicy,
    MemorySeed,
    build_memory,
    earlier_call,
    estimate_tokens,
    lookup_number,
    rememberable_number,
    since,
)
from callbot.core.realtime import AgentConfig
from callbot.core.record import CallInfo
from callbot.core.recovery import RecoveryPolicy, restore_events
from callbot.core.summary import SummaryPolicy

NOW = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


def router_call(ticket_id: int = 12, days_ago: int = 1, **overrides: Any) -> EarlierCall:
    values: dict[str, Any] = {
        "ticket_id": ticket_id,
        "started_at": NOW - timedelta(days=days_ago, hours=2),
        "title": "Router drops the connection",
        "category": "technical",
        "caller_request": "Fix the router that drops the connection every evening.",
        "outcome": "A technician visit was booked for Tuesday.",
        "action_items": ("Technician visits on Tuesday 9-12",),
    }
    values.update(overrides)
    return EarlierCall(**values)


# ----- which numbers get memory -----


@pytest.mark.parametrize(
    ("number", "expected"),
    [
        ("+15551230000", "+15551230000"),
        ("+44 20 7946 0958", "+442079460958"),
        ("+1 (555) 123-0000", "+15551230000"),
        ("anonymous", None),
        ("Anonymous", None),
        ("restricted", None),
        ("", None),
        ("+266696687", None),  # carriers' withheld-number spellings (docs/memory.md §1)
        ("+86282452253", None),
        ("+7378742833", None),
        ("+2562533", None),
        ("+8656696", None),
        ("15551230000", None),  # not E.164: no leading +
        ("+0555123000", None),  # no country code starts with 0
        ("+1234", None),  # too short
        ("+1234567890123456", None),  # too long
        ("client:alice", None),
    ],
)
def test_only_valid_e164_numbers_that_are_not_withheld_are_remembered(
    number: str, expected: str | None
) -> None:
    assert rememberable_number(number) == expected


def test_an_inbound_call_is_remembered_by_the_callers_number() -> None:
    info = CallInfo("CA1", "MZ1", from_number="+15551230000", to_number="+15559870000")
    assert lookup_number(info) == "+15551230000"


def test_an_outbound_call_is_remembered_by_the_number_callbot_dialled() -> None:
    info = CallInfo("CA1", "MZ1", from_number="+15559870000", to_number="+15551230000", direction="outbound")
    assert lookup_number(info) == "+15551230000"


def test_the_lookup_window_is_the_policys_days() -> None:
    assert since(NOW, MemoryPolicy(days=30)) == NOW - timedelta(days=30)


# ----- the message -----


def test_the_message_says_when_what_the_caller_wanted_the_outcome_and_open_items() -> None:
    seed = build_memory([router_call()], NOW, MemoryPolicy())
    assert seed is not None
    assert seed.ticket_ids == (12,)
    lines = seed.text.split("\n")
    assert lines[0] == MEMORY_HEADER and lines[-1] == MEMORY_FOOTER
    assert (
        lines[1]
        == '- 2026-12-06 08:00 UTC (yesterday), ticket #12: "Router drops the connection" [technical]'
    )
    assert lines[2] == "  The caller wanted: Fix the router that drops the connection every evening."
    assert lines[3] == "  Outcome: A technician visit was booked for Tuesday."
    assert lines[4] == "  Open action items: Technician visits on Tuesday 9-12"


def test_calls_are_newest_first_and_at_most_max_calls() -> None:
    calls = [
        router_call(1, days_ago=9),
        router_call(2, days_ago=0),
        router_call(3, days_ago=4),
        router_call(4, 2),
    ]
    seed = build_memory(calls, NOW, MemoryPolicy(max_calls=3))
    assert seed is not None
    assert seed.ticket_ids == (2, 4, 3)
    assert "(today)" in seed.text and "(2 days ago)" in seed.text and "ticket #1:" not in seed.text


@pytest.mark.parametrize("max_tokens", [120, 250, 600])
def test_the_message_never_exceeds_max_tokens(max_tokens: int) -> None:
    long = "word " * 400
    calls = [
        router_call(n, days_ago=n, caller_request=long, outcome=long, action_items=(long, long, long, long))
        for n in range(1, 4)
    ]
    seed = build_memory(calls, NOW, MemoryPolicy(max_tokens=max_tokens))
    assert seed is not None
    assert estimate_tokens(seed.text) <= max_tokens
    assert seed.ticket_ids[0] == 1  # the newest call always comes first
    # an older call is only named when its whole block fits
    for ticket_id in seed.ticket_ids:
        assert f"ticket #{ticket_id}:" in seed.text


def test_a_newest_call_too_big_for_the_budget_keeps_only_its_first_line() -> None:
    seed = build_memory([router_call(caller_request="x " * 500)], NOW, MemoryPolicy(max_tokens=100))
    assert seed is not None
    assert seed.ticket_ids == (12,)
    assert "ticket #12:" in seed.text and "The caller wanted" not in seed.text
    assert estimate_tokens(seed.text) <= 100


def test_no_calls_memory_off_or_no_room_for_a_call_is_no_message() -> None:
    assert build_memory([], NOW, MemoryPolicy()) is None
    assert build_memory([router_call()], NOW, MemoryPolicy(max_tokens=60)) is None  # header and footer only
    assert build_memory([router_call()], NOW, MemoryPolicy(enabled=False)) is None


def test_redaction_applies_to_the_message() -> None:
    call = router_call(outcome="Refund to card 4111 1111 1111 1111 approved.", caller_request="PIN is 8842")
    seed = build_memory([call], NOW, MemoryPolicy(), patterns=[r"PIN is \d+"])
    assert seed is not None
    assert "4111" not in seed.text and "[REDACTED CARD]" in seed.text
    assert "8842" not in seed.text and "[REDACTED]" in seed.text


def test_an_earlier_call_is_read_from_the_structured_summary_only() -> None:
    summary = {
        "title": "  Router   drops ",
        "summary": "Long free text that is not used.",
        "caller_request": "Fix it",
        "outcome": "Booked",
        "category": "technical",
        "action_items": [{"description": "Visit", "owner": None, "due": None}, {"owner": "x"}, "junk"],
        "follow_up_needed": True,
    }
    call = earlier_call(7, NOW, summary)
    assert call == EarlierCall(7, NOW, "Router drops", "technical", "Fix it", "Booked", ("Visit",), True)
    assert earlier_call(8, NOW, {"summary": "no title"}) is None
    seed = build_memory([call], NOW, MemoryPolicy())
    assert seed is not None and "Long free text" not in seed.text


def test_a_promised_follow_up_without_items_is_said() -> None:
    seed = build_memory([router_call(action_items=(), follow_up_needed=True)], NOW, MemoryPolicy())
    assert seed is not None and "A follow-up was promised." in seed.text


# ----- the call: memory at the root, before the greeting -----

SEED = MemorySeed(text=f'{MEMORY_HEADER}\n- ticket #12: "Router"\n{MEMORY_FOOTER}', ticket_ids=(12,))


def configured(
    memory: MemorySeed | None, greeting: str = "Greet the caller."
) -> tuple[CallSession, list[Any]]:
    agent = AgentConfig(audio_mode="pcmu", instructions="You answer for Acme.", greeting=greeting)
    session = CallSession(CallConfig(agent=agent, recovery=RecoveryPolicy(twilio_idle_timeout_ms=10**12)))
    start = h.tw_start({"token": "t", "from": "+15551230000", "to": "+15559870000"})
    assert session.receive_twilio(tw.parse(start), 0) == [ConnectRealtime()]
    session.set_memory(memory)
    session.realtime_connected(10)
    actions = session.receive_realtime(rte.parse(h.session_updated(h.PCMU)), 20)
    events = [a.event for a in actions if isinstance(a, SendRealtime)]
    for event in events:
        h.assert_client_event(event)
    return session, events


def test_the_memory_item_is_created_at_the_root_before_the_greeting_is_asked_for() -> None:
    session, events = configured(SEED)
    assert [e["type"] for e in events] == ["conversation.item.create", "response.create"]
    create, greeting = events
    assert create["previous_item_id"] == "root"
    assert create["item"]["id"] == MEMORY_ITEM_ID and create["item"]["role"] == "system"
    assert create["item"]["content"] == [{"type": "input_text", "text": SEED.text}]
    assert greeting["response"]["instructions"].endswith(GREETING_HINT)
    assert session.memory_ticket_ids == (12,)


def test_without_memory_the_greeting_is_unchanged() -> None:
    session, events = configured(None)
    assert [e["type"] for e in events] == ["response.create"]
    assert GREETING_HINT not in events[0]["response"]["instructions"]
    assert session.memory_ticket_ids == ()


def test_memory_without_a_greeting_is_still_sent() -> None:
    _, events = configured(SEED, greeting="")
    assert [e["type"] for e in events] == ["conversation.item.create"]


def test_memory_that_arrives_after_the_session_was_configured_is_dropped() -> None:
    session, _ = configured(None)
    session.set_memory(SEED)
    assert session.memory is None and session.memory_ticket_ids == ()


def memory_item() -> dict[str, Any]:
    return h.system_item(MEMORY_ITEM_ID, SEED.text)


def test_the_confirmed_memory_item_is_conversation_state_not_a_turn() -> None:
    session, _ = configured(SEED)
    session.receive_realtime(rte.parse(h.item_added(memory_item(), None)), 30)
    conv = session.conversation
    memory = conv.memory_item()
    assert memory is not None and memory.text == SEED.text
    assert conv.context == [MEMORY_ITEM_ID]
    assert conv.transcript() == () and conv.context_turns() == [] and conv.summary_items() == []


# ----- summaries keep it, reconnects restore it -----


@dataclass
class MemoryRig(Rig):
    """The summary policy's rig, for a call that starts with a memory item at the root."""

    def seeded(self) -> MemoryRig:
        """Replace the rig's session by one whose memory is set before it is configured."""
        policy = SummaryPolicy(trigger_tokens=self.trigger, keep_last_turns=self.keep)
        agent = AgentConfig(audio_mode="pcmu", instructions="You answer the phone for Acme Broadband.")
        self.session = CallSession(
            CallConfig(agent=agent, summary=policy, recovery=RecoveryPolicy(twilio_idle_timeout_ms=10**12))
        )
        self.sent.clear()
        assert self.session.receive_twilio(tw.parse(TWILIO_START), 0) == [ConnectRealtime()]
        self.session.set_memory(SEED)
        self.take(self.session.realtime_connected(0))
        [create] = realtime_in(self.take(self.session.receive_realtime(rte.parse(ev_session_updated()), 0)))
        assert create["item"]["id"] == MEMORY_ITEM_ID
        self.server.insert(0, MEMORY_ITEM_ID)
        item = {**create["item"], "object": "realtime.item", "status": "completed"}
        self.rt(ev_item_added(item, None))
        self.rt(ev_item_done(item, None))
        return self


def test_rolling_summaries_keep_the_memory_item_verbatim_and_the_bound_holds() -> None:
    rig = MemoryRig(trigger=1_000, keep=2).seeded()
    rig.base_call(turns=2, total=1_200)
    [first] = rig.requests
    assert MEMORY_ITEM_ID not in first.folded_item_ids
    deleted = rig.summarise_fully(first.summary_id, "Caller Ana, account 4471.")
    assert MEMORY_ITEM_ID not in deleted
    rig.assistant("a3", total=600)
    rig.user("u4", "Can you send a technician?")
    [second] = requests_in(rig.assistant("a4", total=1_100))
    assert second.folded_item_ids[0] == "summary_0001" and MEMORY_ITEM_ID not in second.folded_item_ids
    assert second.previous_summary is not None and MEMORY_HEADER not in second.previous_summary
    deleted = rig.summarise_fully(second.summary_id, "Caller Ana, technician tomorrow.")
    assert MEMORY_ITEM_ID not in deleted
    conv = rig.conv
    # the server and the mirror agree: newest summary, the memory, then the kept turns
    assert conv.context == rig.server == ["summary_0002", MEMORY_ITEM_ID, "u4", "a4"]
    assert conv.memory_item() is not None and conv.memory_item().text == SEED.text  # type: ignore[union-attr]
    assert conv.invariant_violations() == []


def test_a_reconnect_restores_the_memory_item_in_its_place() -> None:
    rig = MemoryRig(trigger=10_000, keep=2).seeded()
    rig.base_call(turns=1, total=500)
    restored = restore_events(rig.conv, rig.session.memory)
    assert [(e["item"]["id"], e["item"]["role"]) for e in restored] == [
        (MEMORY_ITEM_ID, "system"),
        ("a0", "assistant"),
        ("u1", "user"),
        ("a1", "assistant"),
    ]
    assert restored[0]["item"]["content"][0]["text"] == SEED.text


def test_a_session_lost_before_it_confirmed_the_memory_gets_it_again_at_the_root() -> None:
    session, _ = configured(SEED)  # the create was sent, its item.added never came
    restored = restore_events(session.conversation, session.memory)
    assert [(e["item"]["id"], e["previous_item_id"]) for e in restored] == [(MEMORY_ITEM_ID, "root")]


# ----- the record and the filters carry it -----


def test_the_records_memory_ticket_ids_round_trip_through_the_spool_format() -> None:
    from callbot.core.record import CallRecord
    from callbot.core.record_json import record_from_json, record_to_json
    from callbot.errors import RecordJsonError

    record = CallRecord(info=CallInfo("CA1", "MZ1"), started_at=NOW, memory_ticket_ids=(3, 9))
    data = record_to_json(record)
    assert data["memory_ticket_ids"] == [3, 9]
    assert record_from_json(data).memory_ticket_ids == (3, 9)
    old = {k: v for k, v in data.items() if k != "memory_ticket_ids"}  # spooled before issue 17
    assert record_from_json(old).memory_ticket_ids == ()
    for bad in ("3,9", [3, "9"], [True]):
        with pytest.raises(RecordJsonError, match="memory_ticket_ids"):
            record_from_json({**data, "memory_ticket_ids": bad})


def test_the_ticket_list_filters_by_a_number_in_any_common_spelling() -> None:
    from callbot.core.ticket_views import TicketFilters
    from callbot.errors import FilterError

    assert TicketFilters.from_strings(number=" +1 (555) 123-0000 ").number == "+15551230000"
    assert TicketFilters.from_strings(number="anonymous").number == "anonymous"
    assert TicketFilters.from_strings(number="  ").number is None
    with pytest.raises(FilterError, match="not a phone number"):
        TicketFilters.from_strings(number="+1555; drop table")


def test_a_call_without_request_outcome_or_items_is_one_line() -> None:
    bare = router_call(caller_request="", outcome="", action_items=(), category="")
    seed = build_memory([bare], NOW, MemoryPolicy())
    assert seed is not None
    assert (
        seed.text.split("\n")[1]
        == '- 2026-12-06 08:00 UTC (yesterday), ticket #12: "Router drops the connection"'
    )
    assert len(seed.text.split("\n")) == 3
    assert seed.tokens == estimate_tokens(seed.text) > 0
