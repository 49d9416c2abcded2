"""Every exception callbot raises, in one tree whose branches say whose fault it was.

    CallbotError
    ├── RemoteError            the other side: an OpenAI service, or what a peer or model sent
    │   ├── UpstreamError          the Realtime session failed, closed or sent garbage
    │   ├── SummaryUnavailable     a summary model (in-call or ticket) failed or answered nothing usable
    │   ├── TicketSummaryInvalid   a ticket summary that does not match the schema
    │   ├── TwilioRestError        Twilio's REST API refused a request or could not be reached
    │   │   └── CallGone               the call no longer exists (404, Twilio code 20404)
    │   └── ToolFailed             an HTTP tool failed, answered garbage or timed out
    ├── LocalError             this deployment or its operator: settings, configured files, typed input
    │   ├── SettingsError          a setting is missing or wrong
    │   ├── TicketSchemaError      a custom ticket schema or prompt file is unusable
    │   ├── ToolsFileError         the tools file (CALLBOT_TOOLS_FILE) is unusable
    │   ├── FilterError            a ticket filter a person typed is unusable
    │   ├── InvalidCallRequest     a call to place (number, context, CSV row) is unusable
    │   ├── AudioDeviceError       (callbot.phone.devices) live audio cannot work on this machine
    │   └── ScriptError            (callbot.phone.script) a softphone script line or WAV is unusable
    └── StorageError           where tickets are kept: the database, the spool, what they hold
        ├── StoreUnavailable       the database cannot be reached or used right now
        ├── TicketNotFound         no ticket for that call sid
        ├── SpoolError             the spool directory cannot be written
        └── RecordJsonError        a stored record cannot be read back

Two exceptions stay outside on purpose (tests/test_errors.py walks the package to check that
no other does): `callbot.testing.protocol_check.ProtocolViolation`, the test doubles' assertion
that an event breaks the Realtime protocol (a bug in the code under test, never a condition to
handle), and `callbot.cli_calls._Fatal`, the campaign runner's private signal that cancels every
row; it never leaves `run_campaign`.

As in h11 (LocalProtocolError / RemoteProtocolError) and httpx, the class tells a handler what it
can do: retry later (remote, storage), or tell a person what to fix (local). Library exceptions
never leave the adapter that called the library: each adapter translates them at its boundary
(`raise UpstreamError(...) from exc`), so the bridge and the services catch only these.

Classes that were `ValueError` or `LookupError` before the tree stay so, so existing `except`
clauses (pydantic's validators among them) keep working. This module imports nothing: every
layer, core included, may raise from it.
"""

from __future__ import annotations


class CallbotError(Exception):
    """The root: anything callbot raises on purpose."""


# ----- the other side's fault -----


class RemoteError(CallbotError):
    """An outside service failed, or a peer or model sent something unusable; often worth a retry."""


class UpstreamError(RemoteError):
    """The Realtime connection failed or closed; the message says how."""


class SummaryUnavailable(RemoteError):
    """A summary model (in-call or post-call) failed, timed out, refused or answered nothing usable."""


class TicketSummaryInvalid(RemoteError, ValueError):
    """A summary does not match the schema; the message names the offending field."""


class TwilioRestError(RemoteError):
    """Twilio's REST API refused a request or could not be reached.

    `status` is the HTTP status (0 when no answer came) and `code` Twilio's error code, if any."""

    def __init__(self, message: str, *, status: int = 0, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class CallGone(TwilioRestError):
    """The call has already ended or never existed (HTTP 404, Twilio code 20404)."""


class ToolFailed(RemoteError):
    """An HTTP tool failed (HTTP error, not JSON, unreachable) or timed out (`timed_out`).

    The message is what the model is told, so it explains the failure to the caller; it never
    carries the tool's headers."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


# ----- this deployment's fault -----


class LocalError(CallbotError):
    """Something on this side is wrong: a setting, a configured file, input a person typed."""


class SettingsError(LocalError, ValueError):
    """A setting is missing or wrong; the message says what to set."""


class TicketSchemaError(LocalError, ValueError):
    """A custom ticket schema or prompt file cannot be used; the message says why."""


class ToolsFileError(LocalError, ValueError):
    """The tools file cannot be used; the message names the bad entry and field."""


class FilterError(LocalError, ValueError):
    """A filter value a person typed is not usable; the message says which and why."""


class InvalidCallRequest(LocalError, ValueError):
    """A call to place is not usable (bad number, context, CSV row); the message says why."""


# ----- storage -----


class StorageError(CallbotError):
    """Where tickets are kept (database, spool) failed, or what it holds cannot be read."""


class StoreUnavailable(StorageError):
    """The database cannot be reached or used right now; the message says what failed."""


class TicketNotFound(StorageError, LookupError):
    """No ticket exists for the given call sid."""


class SpoolError(StorageError):
    """The spool directory cannot be written; the message names the path."""


class RecordJsonError(StorageError, ValueError):
    """A stored record cannot be read back; the message names the field."""
