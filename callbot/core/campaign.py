"""A campaign: calls from a CSV, and the state that lets a run resume without calling anyone twice.

No I/O: the CLI reads the CSV text and the state file's lines and writes what these functions
return. Each row is keyed by its line number and number, so an edited CSV (a row moved) is not
mistaken for an earlier row. A row is marked `placing` (with the time) in the state file before
its call is placed, and `placed` with its call sid once the server answered. A resumed run never
places a marked row again: it watches `placed` rows to their end, and asks the server about a
`placing` row with nothing after it (the interrupt came while the request was out): a call to
that number placed since is adopted, and only a row the server has no call for is placed.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from callbot.core.call_lifecycle import CallRequest, call_request
from callbot.errors import InvalidCallRequest

COLUMNS = ("number", "instructions", "context")


@dataclass(frozen=True, slots=True)
class CampaignRow:
    line: int
    request: CallRequest

    @property
    def key(self) -> str:
        return f"{self.line}:{self.request.to}"


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    message: str


def parse_campaign_csv(text: str, *, from_: str | None = None) -> tuple[list[CampaignRow], list[RowError]]:
    """The good rows and the bad ones (by line, with why); a header row naming `number` is required."""
    reader = csv.DictReader(io.StringIO(text))
    header = [name.strip().lower() for name in (reader.fieldnames or [])]
    if "number" not in header:
        raise InvalidCallRequest(
            "the CSV needs a header row with a 'number' column (optional: instructions, context)"
        )
    unknown = [name for name in header if name not in COLUMNS]
    if unknown:
        raise InvalidCallRequest(f"unknown CSV column(s): {', '.join(unknown)} (known: {', '.join(COLUMNS)})")
    reader.fieldnames = header
    rows: list[CampaignRow] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    for raw in reader:
        line = reader.line_num
        if raw.get(None):  # type: ignore[call-overload,unused-ignore]  # extra cells go under None
            errors.append(RowError(line, "more cells than columns"))
            continue
        number = (raw.get("number") or "").strip()
        if not number and not any((v or "").strip() for v in raw.values()):
            continue  # a blank line
        try:
            request = call_request(
                number, from_=from_, instructions=raw.get("instructions"), context=raw.get("context")
            )
        except InvalidCallRequest as exc:
            errors.append(RowError(line, str(exc)))
            continue
        if request.to in seen:
            errors.append(RowError(line, f"{request.to} is already on line {seen[request.to]}"))
            continue
        seen[request.to] = line
        rows.append(CampaignRow(line, request))
    return rows, errors


@dataclass(slots=True)
class RowState:
    key: str
    line: int
    number: str
    state: str = "placing"  # placing -> placed -> done | failed
    call_sid: str | None = None
    ticket_id: int | None = None
    outcome: str | None = None
    error: str | None = None
    placing_at: str | None = None  # ISO time the request went out (the CLI's clock)
    request_id: str | None = None  # sent with the request: the server places one call per id

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "placing_at": self.placing_at,
            "request_id": self.request_id,
            "line": self.line,
            "number": self.number,
            "state": self.state,
            "call_sid": self.call_sid,
            "ticket_id": self.ticket_id,
            "outcome": self.outcome,
            "error": self.error,
        }


@dataclass(slots=True)
class CampaignState:
    """The rows already handled, as read back from the state file (one JSON object a line;
    the last line for a key wins, and a torn last line from a crash is ignored)."""

    rows: dict[str, RowState] = field(default_factory=dict)

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> CampaignState:
        state = cls()
        for text in lines:
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                continue
            if not isinstance(data, dict) or not isinstance(data.get("key"), str):
                continue
            state.rows[data["key"]] = RowState(
                key=data["key"],
                line=int(data.get("line") or 0),
                number=str(data.get("number") or ""),
                state=str(data.get("state") or "placing"),
                call_sid=data.get("call_sid"),
                ticket_id=data.get("ticket_id"),
                outcome=data.get("outcome"),
                error=data.get("error"),
                placing_at=data.get("placing_at"),
                request_id=data.get("request_id"),
            )
        return state

    def to_place(self, rows: Iterable[CampaignRow]) -> list[CampaignRow]:
        """The rows never touched by an earlier run."""
        return [row for row in rows if row.key not in self.rows]

    def to_check(self) -> list[RowState]:
        """Rows an interrupt caught between `placing` and the server's answer."""
        return [r for r in self.rows.values() if r.state == "placing"]

    def to_watch(self) -> list[RowState]:
        """Rows placed by an earlier run whose final status it did not see."""
        return [r for r in self.rows.values() if r.state == "placed"]

    def record(self, row: RowState) -> str:
        """Remember `row` and return the line to append to the state file."""
        self.rows[row.key] = row
        return json.dumps(row.to_json(), sort_keys=True)


def outcome_counts(states: Iterable[RowState]) -> dict[str, int]:
    """Per-outcome counts for the progress bar and the report: the outcome, else the state."""
    counts: dict[str, int] = {}
    for row in states:
        label = row.outcome or row.state
        counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))
