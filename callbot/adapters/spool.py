"""A durable local spool for tickets the database could not take when the call ended.

A call's record is the only copy of what was said; if the database is down at hang-up, losing
it would lose the ticket. Each call becomes one JSON file named by its call sid, written
atomically (temporary file, fsync, rename, fsync of the directory), so a crash leaves either
the old file or the new one, never half of one. Writing the same call again replaces its file,
which makes `put` idempotent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from callbot.core.record import CallRecord
from callbot.core.record_json import record_from_json, record_to_json
from callbot.errors import RecordJsonError, SpoolError

log = logging.getLogger(__name__)

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,100}$")
SUFFIX = ".json"


@dataclass(frozen=True, slots=True)
class SpooledCall:
    call_sid: str
    record: CallRecord
    summary: dict[str, Any] | None
    path: Path


class Spool:
    """One directory of pending tickets; safe to share between the service and the CLI."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def path_for(self, call_sid: str) -> Path:
        # Twilio call sids are safe file names; anything else is hashed rather than trusted.
        name = (
            call_sid if _SAFE_NAME.match(call_sid) else "x-" + hashlib.sha256(call_sid.encode()).hexdigest()
        )
        return self.directory / (name + SUFFIX)

    def put(self, record: CallRecord, summary: dict[str, Any] | None = None) -> Path:
        """Write (or replace) the call's spool file and make sure it reached the disk."""
        payload = {"record": record_to_json(record), "summary": summary}
        data = json.dumps(payload, ensure_ascii=False, indent=1).encode("utf-8")
        target = self.path_for(record.info.call_sid)
        tmp = self.directory / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
            _fsync_directory(self.directory)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise SpoolError(f"cannot write spool file {target}: {exc}") from exc
        return target

    def items(self) -> list[SpooledCall]:
        """Every readable spooled call, oldest file first; unreadable files are set aside."""
        if not self.directory.is_dir():
            return []
        calls = []
        for path in sorted(self.directory.glob("*" + SUFFIX), key=_age):
            try:
                payload = json.loads(path.read_text(encoding="utf-8"))
                record = record_from_json(payload["record"])
                summary = payload.get("summary")
                if summary is not None and not isinstance(summary, dict):
                    raise RecordJsonError("summary must be an object or null")
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError) as exc:
                # Keep the bytes for a person to look at, but stop retrying them forever.
                log.error("spool file %s is unreadable, renaming it to .bad: %s", path, exc, exc_info=True)
                path.replace(path.with_suffix(".bad"))
                continue
            calls.append(SpooledCall(record.info.call_sid, record, summary, path))
        return calls

    def remove(self, call_sid: str) -> None:
        self.path_for(call_sid).unlink(missing_ok=True)
        _fsync_directory(self.directory)

    def __len__(self) -> int:
        return len(list(self.directory.glob("*" + SUFFIX))) if self.directory.is_dir() else 0


def _age(path: Path) -> tuple[float, str]:
    try:
        return (path.stat().st_mtime, path.name)
    except FileNotFoundError:  # removed meanwhile by another flush; it is skipped when read
        return (0.0, path.name)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; without it a power cut can forget the new name.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
