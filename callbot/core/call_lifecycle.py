"""A call's life as Twilio reports it, and what callbot decides from it. No I/O, no clock.

- Placing a call: the number (E.164), the per-call instructions and context, and the agent's
  configuration for that call (it opens with why it calls).
- Status callbacks: parsed into `StatusUpdate`, merged into the ticket's `Lifecycle` so that
  duplicates and out-of-order deliveries change nothing (docs/call-control.md §7).
- Answering machines: which detection mode to ask for and what to do with `AnsweredBy`
  (docs/call-control.md §4, §7).
- The ticket's outcome, from all of the above.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from callbot.core.call_control import FINAL_CALL_STATUSES, CallState
from callbot.core.realtime import AgentConfig
from callbot.core.record import CallInfo
from callbot.errors import InvalidCallRequest

E164 = re.compile(r"\+[1-9][0-9]{6,14}")
MAX_INSTRUCTIONS_CHARS = 4000
MAX_CONTEXT_CHARS = 4000
TRANSFER_SLACK_S = 5
"""A call that outlives its media stream by more than this was handed on (docs/call-control.md §7)."""

NO_MEDIA_STREAM = "no media stream"
"""The end reason of an inbound call whose webhook was answered but whose media stream never
started (the caller hung up first, or the stream could not connect)."""
STREAMLESS_SLACK_S = 30
"""How long past its stream token's lifetime an inbound ticket without a stream is left open:
the token refuses a later stream, and this covers clocks that differ between replicas."""
_CALL_SID = re.compile(r"[A-Za-z0-9]{1,64}")

CALL_STATUSES = ("queued", "initiated", "ringing", "in-progress", *sorted(FINAL_CALL_STATUSES))
ANSWERED_BY = (
    "human",
    "machine_start",
    "machine_end_beep",
    "machine_end_silence",
    "machine_end_other",
    "fax",
    "unknown",
)
MachinePolicy = Literal["voicemail", "hangup"]
AmdAction = Literal["talk", "voicemail", "hangup", "wait"]


# ----- an inbound call arriving -----


def arrival_info(params: Mapping[str, str]) -> CallInfo | None:
    """Who calls whom, from the voice webhook's form; None when its `CallSid` is not one a ticket
    can be keyed on (empty, too long, or not letters and digits: not Twilio's)."""
    call_sid = params.get("CallSid", "")
    if not _CALL_SID.fullmatch(call_sid):
        return None
    return CallInfo(
        call_sid=call_sid,
        stream_sid="",
        account_sid=params.get("AccountSid", "")[:64],
        from_number=params.get("From", "")[:64],
        to_number=params.get("To", "")[:64],
        direction="inbound",
    )


STATUS_OVERDUE_S = 60
"""How long after its stream ended (or, never streamed, after it stopped ringing and its token
ran out) a call may go without Twilio's final status callback before callbot asks Twilio."""


def status_overdue_s(ring_timeout_s: float, stream_token_ttl_s: float) -> tuple[float, float]:
    """(after the stream ended, after the call was placed or arrived): the ages past which a
    call still without its final status is looked up (`callbot.call_status`)."""
    return STATUS_OVERDUE_S, ring_timeout_s + stream_token_ttl_s + STATUS_OVERDUE_S


def fetched_status(call_sid: str, state: CallState) -> StatusUpdate | None:
    """A final status read off Twilio's call resource, as the callback that was missed; None
    while the call is not over (it is asked again later)."""
    if not state.final:
        return None
    return StatusUpdate(call_sid=call_sid, status=state.status, duration_s=state.duration_s)


def streamless_after_s(stream_token_ttl_s: float) -> float:
    """Age at which an inbound ticket whose stream never started is finished as `NO_MEDIA_STREAM`."""
    return stream_token_ttl_s + STREAMLESS_SLACK_S


# ----- placing a call -----


def check_e164(number: str, what: str = "number") -> str:
    """The number, stripped, if it is E.164 (docs/call-control.md §7); else InvalidCallRequest."""
    cleaned = number.strip()
    if not E164.fullmatch(cleaned):
        raise InvalidCallRequest(
            f"{what} {number!r} is not an E.164 phone number (a '+', the country code, then the "
            "number: 7 to 15 digits in all, e.g. +15551234567)"
        )
    return cleaned


@dataclass(frozen=True, slots=True)
class CallRequest:
    """One call to place, validated: where to, from which number, and why."""

    to: str
    from_: str | None = None
    instructions: str = ""
    context: Mapping[str, Any] | None = None


def call_request(
    to: object, *, from_: object = None, instructions: object = None, context: object = None
) -> CallRequest:
    """Validate what a person or the API asked for; InvalidCallRequest names the bad field.

    `context` may be a JSON object or its text (the CLI's `--context`, a CSV column)."""
    if not isinstance(to, str):
        raise InvalidCallRequest("'to' must be a phone number string")
    number = check_e164(to, "'to'")
    sender = None
    if from_ is not None and from_ != "":
        if not isinstance(from_, str):
            raise InvalidCallRequest("'from' must be a phone number string")
        sender = check_e164(from_, "'from'")
    if instructions is None:
        instructions = ""
    if not isinstance(instructions, str):
        raise InvalidCallRequest("'instructions' must be text")
    if len(instructions) > MAX_INSTRUCTIONS_CHARS:
        raise InvalidCallRequest(f"'instructions' is longer than {MAX_INSTRUCTIONS_CHARS} characters")
    _check_storable(instructions, "'instructions'")
    return CallRequest(number, sender, instructions.strip(), _context(context))


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _check_storable(text: str, what: str) -> None:
    """A NUL or a lone surrogate cannot be stored (PostgreSQL refuses NUL in text and JSON; a
    surrogate has no UTF-8) nor sent to the model: the request is refused, naming the field."""
    found = _UNSTORABLE.search(text)
    if found is not None:
        raise InvalidCallRequest(
            f"{what} holds the character U+{ord(found.group()):04X} (a NUL or a lone surrogate), "
            "which cannot be stored"
        )


def _context(context: object) -> Mapping[str, Any] | None:
    if context is None or context == "":
        return None
    if isinstance(context, str):
        if len(context) > 4 * MAX_CONTEXT_CHARS:
            raise InvalidCallRequest(f"'context' is larger than {MAX_CONTEXT_CHARS} characters of JSON")
        try:
            context = json.loads(context)
        except json.JSONDecodeError as exc:
            raise InvalidCallRequest(f"'context' is not valid JSON: {exc.msg} at column {exc.colno}") from exc
        except (ValueError, RecursionError) as exc:  # a number too long for int(), nesting too deep
            raise InvalidCallRequest(f"'context' is not JSON callbot can read: {str(exc)[:80]}") from exc
    if not isinstance(context, dict):
        raise InvalidCallRequest('\'context\' must be a JSON object, e.g. {"order": "4417"}')
    try:
        size = len(json.dumps(context))
    except (ValueError, RecursionError) as exc:
        raise InvalidCallRequest(f"'context' is not JSON callbot can store: {str(exc)[:80]}") from exc
    if size > MAX_CONTEXT_CHARS:
        raise InvalidCallRequest(f"'context' is larger than {MAX_CONTEXT_CHARS} characters of JSON")
    for text in _strings(context):
        _check_storable(text, "'context'")
    return context


def _strings(value: object) -> list[str]:
    """Every key and string in a JSON value (small: it passed the size check)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def outbound_agent(agent: AgentConfig, instructions: str, context: Mapping[str, Any] | None) -> AgentConfig:
    """The agent for a call callbot placed: told it is calling out, why, and with what facts,
    and opening with the reason for the call instead of a support-line greeting."""
    parts = [
        agent.instructions,
        "This is an outbound call: you called this person, they did not call you.",
    ]
    if instructions:
        parts.append(f"Why you are calling and what to do:\n{instructions}")
    if context:
        parts.append(
            "Facts about this call (JSON):\n" + json.dumps(context, ensure_ascii=False, sort_keys=True)
        )
    greeting = (
        "The person has just answered your call. Greet them, say who you are, and say in one or "
        "two sentences why you are calling" + (f" ({instructions[:300]})." if instructions else ".")
    )
    return replace(agent, instructions="\n\n".join(p for p in parts if p), greeting=greeting)


@dataclass(frozen=True, slots=True)
class PlacedCall:
    """What callbot stored when it placed a call: its own id for the call, and why it calls."""

    placement_id: str
    instructions: str = ""
    context: Mapping[str, Any] | None = None


def placement_subject(placement_id: str) -> str:
    """What an outbound call's stream token is minted over (docs/call-control.md §7)."""
    return f"outbound:{placement_id}"


# ----- answering machines -----


def machine_detection(policy: MachinePolicy, voicemail_message: str) -> str:
    """`DetectMessageEnd` when a voicemail is to be left (it waits for the beep), else `Enable`
    (it answers sooner, and a machine is hung up on at once)."""
    return "DetectMessageEnd" if policy == "voicemail" and voicemail_message else "Enable"


def amd_action(answered_by: str, policy: MachinePolicy, voicemail_message: str) -> AmdAction:
    """What to do with an asynchronous AMD result (docs/call-control.md §4, §7).

    A person (or a result nobody can tell) gets the agent. A voicemail is left only once the
    greeting has ended (`machine_end_*`); `machine_start` with a voicemail to leave waits for
    the end (it only comes from `Enable`, so it is hung up on otherwise); a fax is hung up on."""
    if answered_by in ("human", "unknown", ""):
        return "talk"
    if answered_by == "fax":
        return "hangup"
    leave = policy == "voicemail" and bool(voicemail_message)
    if answered_by.startswith("machine_end_"):
        return "voicemail" if leave else "hangup"
    if answered_by == "machine_start":
        return "wait" if leave else "hangup"
    return "talk"


# ----- status callbacks -----


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    """One status callback (docs/call-control.md §5, §7)."""

    call_sid: str
    status: str
    sequence: int | None = None
    duration_s: int | None = None
    answered_by: str | None = None
    from_number: str = ""
    to_number: str = ""
    direction: str = "inbound"

    @property
    def final(self) -> bool:
        return self.status in FINAL_CALL_STATUSES


def _optional_int(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 9:
        raise InvalidCallRequest(f"status callback field {name} is not a number: {value[:20]!r}")
    return int(value)


def parse_status_callback(params: Mapping[str, str]) -> StatusUpdate:
    """Twilio's form fields as a `StatusUpdate`; InvalidCallRequest for a callback without a call
    or with a number field that is not a count, or a From/To holding a NUL (PostgreSQL refuses it in
    text). Numbers are cut to the 64 characters a ticket keeps."""
    call_sid = params.get("CallSid", "")
    status = params.get("CallStatus", "")
    if not _CALL_SID.fullmatch(call_sid) or status not in CALL_STATUSES:
        raise InvalidCallRequest(
            f"status callback without a valid CallSid or with unknown CallStatus {status[:20]!r}"
        )
    answered_by = params.get("AnsweredBy") or None
    direction = "outbound" if params.get("Direction", "").startswith("outbound") else "inbound"
    from_number, to_number = params.get("From", "")[:64], params.get("To", "")[:64]
    _check_storable(from_number, "status callback field From")
    _check_storable(to_number, "status callback field To")
    return StatusUpdate(
        call_sid=call_sid,
        status=status,
        sequence=_optional_int(params.get("SequenceNumber"), "SequenceNumber"),
        duration_s=_optional_int(params.get("CallDuration"), "CallDuration"),
        answered_by=answered_by if answered_by in ANSWERED_BY else None,
        from_number=from_number,
        to_number=to_number,
        direction=direction,
    )


def parse_amd_callback(params: Mapping[str, str]) -> tuple[str, str]:
    """The asynchronous AMD callback's call sid and `AnsweredBy` (empty when it is not one of
    Twilio's values, which `amd_action` treats as a person); InvalidCallRequest for a callback
    without a valid CallSid (letters and digits, at most 64: it goes into a REST URL and a query)."""
    call_sid = params.get("CallSid", "")
    if not _CALL_SID.fullmatch(call_sid):
        raise InvalidCallRequest(f"AMD callback without a valid CallSid: {call_sid[:20]!r}")
    answered_by = params.get("AnsweredBy", "")
    return call_sid, answered_by if answered_by in ANSWERED_BY else ""


@dataclass(frozen=True, slots=True)
class Lifecycle:
    """What the ticket knows of the call from Twilio and from callbot's own handling of it."""

    twilio_status: str | None = None
    sequence: int | None = None
    duration_s: int | None = None
    answered_by: str | None = None
    voicemail_left: bool = False
    outcome: str | None = None

    @property
    def final(self) -> bool:
        return self.twilio_status in FINAL_CALL_STATUSES


def merge_status(current: Lifecycle, update: StatusUpdate) -> Lifecycle:
    """Fold one callback in. A final status is never replaced by a non-final one, nor by another
    final one (duplicates); between non-final ones the higher `SequenceNumber` wins, and one
    without a number never overrides one with. Fields a callback does not carry are kept."""
    take_status = not current.final and (
        update.final
        or current.twilio_status is None
        or (update.sequence is not None and (current.sequence is None or update.sequence > current.sequence))
    )
    if not take_status:
        return replace(
            current,
            answered_by=current.answered_by or update.answered_by,
            duration_s=current.duration_s if current.duration_s is not None else update.duration_s,
        )
    return replace(
        current,
        twilio_status=update.status,
        sequence=update.sequence if update.sequence is not None else current.sequence,
        duration_s=update.duration_s if update.duration_s is not None else current.duration_s,
        answered_by=update.answered_by or current.answered_by,
    )


def call_outcome(lifecycle: Lifecycle, *, stream_started: bool, stream_s: float | None) -> str | None:
    """The ticket's outcome once Twilio's final status is known (None before).

    `voicemail_left`, `machine` (hung up on a machine or fax), `transferred` (the call went on
    after its stream ended, docs/call-control.md §7), `talked`, or Twilio's own final status for
    a call that never reached the agent (`busy`, `no-answer`, `failed`, `canceled`, and
    `completed` when it was answered but no stream ran)."""
    if not lifecycle.final:
        return None
    if lifecycle.voicemail_left:
        return "voicemail_left"
    answered_by = lifecycle.answered_by or ""
    if answered_by.startswith("machine") or answered_by == "fax":
        return "machine"
    status = lifecycle.twilio_status or ""
    if status != "completed" or not stream_started:
        return status
    if (
        stream_s is not None
        and lifecycle.duration_s is not None
        and lifecycle.duration_s > stream_s + TRANSFER_SLACK_S
    ):
        return "transferred"
    return "talked"
