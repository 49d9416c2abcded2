"""What callbot asks of Twilio's REST API about a call: plain requests, no I/O.

The port `callbot.ports.CallControl` takes these; `callbot.adapters.twilio_rest` sends them with
the `twilio` library, and `callbot.testing.fake_twilio_rest` plays Twilio's side offline. The
wire names (PascalCase form fields on `/2010-04-01/Accounts/{AccountSid}/Calls...`) are the
adapter's business and are listed in docs/call-control.md §1.
"""

from __future__ import annotations

from dataclasses import dataclass

# Twilio's final call statuses (docs/call-control.md §5).
FINAL_CALL_STATUSES = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})


@dataclass(frozen=True, slots=True)
class CallUpdate:
    """Change a live call: end it (`status="completed"`) or replace its TwiML (`twiml=...`).

    Twilio takes one or the other: new TwiML ends the `<Connect><Stream>` (the stream gets a
    `stop`), `completed` hangs up. `canceled` only affects calls still queued or ringing."""

    status: str | None = None
    twiml: str | None = None

    def __post_init__(self) -> None:
        if (self.status is None) == (self.twiml is None):
            raise ValueError("a call update sets exactly one of status and twiml")
        if self.status is not None and self.status not in ("completed", "canceled"):
            raise ValueError(f"a call can only be updated to completed or canceled, not {self.status!r}")


@dataclass(frozen=True, slots=True)
class CallCreate:
    """Place an outbound call that runs `twiml` once answered.

    `status_callback` receives the call's progress (`status_events`, Twilio sends only
    `completed` when none are given); `machine_detection` is None, "Enable" or
    "DetectMessageEnd", with the asynchronous result posted to `amd_status_callback`."""

    to: str
    from_: str
    twiml: str
    status_callback: str | None = None
    status_events: tuple[str, ...] = ()
    machine_detection: str | None = None
    amd_status_callback: str | None = None
    ring_timeout_s: int | None = None

    def __post_init__(self) -> None:
        if self.machine_detection not in (None, "Enable", "DetectMessageEnd"):
            wanted = "Enable or DetectMessageEnd"
            raise ValueError(f"machine_detection must be {wanted}, not {self.machine_detection!r}")


@dataclass(frozen=True, slots=True)
class CreatedCall:
    """Twilio's answer to a create: the new call's sid and its first status (usually `queued`)."""

    call_sid: str
    status: str


@dataclass(frozen=True, slots=True)
class CallState:
    """What Twilio's call resource says of a call now (a fetch): its status, and its length in
    seconds once it has ended. Asked when a final status callback has not arrived."""

    status: str
    duration_s: int | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL_CALL_STATUSES
