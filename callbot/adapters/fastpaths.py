"""The fast paths that reach past a library's public API, and the probes that decide whether they run.

callbot depends on its libraries through their public APIs, with three exceptions that pay for
themselves on the hot path or in operations (measured in bench/README.md):

- `twilio_channel` (`adapters/ws_channel.py`): uvicorn's sans-I/O websocket protocol, extended so
  the media stream's frames skip ASGI messages. Public path: uvicorn's own websocket protocol and
  plain ASGI.
- `realtime_frames` (`adapters/realtime_openai.py`): client text frames written straight to the
  Realtime websocket under the SDK, and its plain server text frames handed to the bridge as they
  are read. Public path: the SDK's `send_raw` and `recv_bytes`.
- `sigterm_drain` (`adapters/uvicorn_server.py`): uvicorn's `Server.handle_exit`, so SIGTERM drains
  calls instead of closing every websocket at once. Public path: plain `uvicorn.Server`.

Each module lists every internal name it touches (its `TOUCHES`) and has a `probe()` that checks
them on the installed versions, and where it can, exercises the fast path in memory. A probe runs
once per process (`probe_fast_paths`); when it fails, the public path runs and one WARNING names
what was missing. `/healthz` and the `callbot_fast_path` metric say which path runs, and
`CALLBOT_FAST_PATHS=false` forces the public paths. tests/test_fast_path_contract.py asserts every
probe passes on the locked versions, so a release that changes an internal fails a check instead
of slowing or breaking calls.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

log = logging.getLogger("callbot.fastpaths")


def versions(*packages: str) -> str:
    """'uvicorn 0.55.0, websockets 17.4': what a probe ran against, for its log line."""
    parts = []
    for name in packages:
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} (not installed)")
    return ", ".join(parts)


@dataclass(frozen=True)
class FastPath:
    """What one probe found: whether the fast path runs, and if not, why and what runs instead."""

    name: str
    libraries: str
    fallback: str
    missing: str = ""
    disabled: bool = False

    @property
    def active(self) -> bool:
        return not self.missing and not self.disabled

    def describe(self) -> dict[str, object]:
        detail: dict[str, object] = {"active": self.active, "libraries": self.libraries}
        if not self.active:
            detail["instead"] = self.fallback
            detail["why"] = "switched off (CALLBOT_FAST_PATHS=false)" if self.disabled else self.missing
        return detail


Probe = Callable[[], str]
"""Checks a fast path on the installed versions: '' if it works, else what is missing or wrong."""


def self_test_on_a_thread(name: str, self_test: Callable[[], Coroutine[Any, Any, str]]) -> str:
    """Run a probe's in-memory self-test in an event loop of its own, on a thread of its own, so
    a probe works inside a running loop too; '' when it passed, else why it failed."""
    outcome: list[str] = []

    def run() -> None:
        try:
            outcome.append(asyncio.run(self_test()))
        except Exception as exc:  # a changed internal fails here as AttributeError, TypeError, ...
            # The failure is the probe's result (the start-up WARNING names it); the traceback says where.
            log.debug("%s probe: the self-test raised", name, exc_info=True)
            outcome.append(f"{type(exc).__name__}: {exc}")

    thread = threading.Thread(target=run, name=f"callbot-probe-{name}")
    thread.start()
    thread.join(timeout=10)
    return outcome[0] if outcome else "the in-memory self-test did not finish"


def run_probe(name: str, packages: tuple[str, ...], fallback: str, probe: Probe) -> FastPath:
    """Run one probe; any exception is a failed probe (a library changed), never a failed start."""
    try:
        missing = probe()
    except Exception as exc:  # whatever a changed internal raises, the public path must still run
        # The failure is the probe's result (the start-up WARNING names it); the traceback says where.
        log.debug("fast path %s: the probe raised", name, exc_info=True)
        missing = f"{type(exc).__name__}: {exc}"
    return FastPath(name, versions(*packages), fallback, missing)


@dataclass(frozen=True)
class FastPaths:
    twilio_channel: FastPath
    realtime_frames: FastPath
    sigterm_drain: FastPath

    def all(self) -> tuple[FastPath, ...]:
        return (self.twilio_channel, self.realtime_frames, self.sigterm_drain)

    def describe(self) -> dict[str, dict[str, object]]:
        return {path.name: path.describe() for path in self.all()}


def _switched_off(path: FastPath) -> FastPath:
    return FastPath(path.name, path.libraries, path.fallback, path.missing, disabled=True)


@functools.cache
def _probed() -> FastPaths:
    from callbot.adapters import realtime_openai, uvicorn_server, ws_channel

    paths = FastPaths(
        twilio_channel=run_probe(
            "twilio_channel", ("uvicorn", "websockets"), ws_channel.FALLBACK, ws_channel.probe
        ),
        realtime_frames=run_probe(
            "realtime_frames", ("openai", "websockets"), realtime_openai.FALLBACK, realtime_openai.probe
        ),
        sigterm_drain=run_probe("sigterm_drain", ("uvicorn",), uvicorn_server.FALLBACK, uvicorn_server.probe),
    )
    for path in paths.all():
        if path.missing:
            log.warning(
                "fast path %s is off on %s (%s); using %s instead",
                path.name,
                path.libraries,
                path.missing,
                path.fallback,
            )
    return paths


def summary_line(paths: FastPaths) -> str:
    """'twilio_channel on, realtime_frames off (the SDK's send_raw and recv_bytes), ...': the start-up
    log line."""
    return ", ".join(
        f"{path.name} on" if path.active else f"{path.name} off ({path.fallback})" for path in paths.all()
    )


def probe_fast_paths(enabled: bool = True) -> FastPaths:
    """The probes' results for this process (they run once); `enabled=False` forces the public paths."""
    paths = _probed()
    if enabled:
        return paths
    return FastPaths(*(_switched_off(path) for path in paths.all()))
