"""What the routes share for one app, and the small builder that makes it at start-up.

`open_services` builds the real adapters (through `callbot.compose`) for whatever a test did not
inject, and tears them down again at shutdown; `Services` is what the routes find on
`app.state.services`.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from callbot import compose
from callbot.adapters.fastpaths import FastPaths, probe_fast_paths, summary_line
from callbot.bridge import CallBridge, Pacer
from callbot.metrics import Metrics
from callbot.ports import (
    CallControl,
    CallerMemory,
    CallLog,
    CallObserver,
    RealtimeConnector,
    Summariser,
    TicketReader,
)
from callbot.settings import Settings

log = logging.getLogger("callbot.web")


class ActiveCalls:
    """The calls in progress: a set the media route adds to and discards from, which can also be
    awaited until it is empty (drain, the demo, tests) instead of polled."""

    def __init__(self) -> None:
        self._calls: set[CallBridge] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, bridge: CallBridge) -> None:
        self._calls.add(bridge)
        self._empty.clear()

    def discard(self, bridge: CallBridge) -> None:
        self._calls.discard(bridge)
        if not self._calls:
            self._empty.set()

    def __len__(self) -> int:
        return len(self._calls)

    def __iter__(self) -> Iterator[CallBridge]:
        return iter(list(self._calls))

    async def wait_empty(self, timeout_s: float | None = None) -> bool:
        """Wait until no call is left, at most `timeout_s`; True if none is left."""
        if not self._calls:
            return True
        try:
            await asyncio.wait_for(self._empty.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


@dataclass
class Services:
    """What the routes need, built in the lifespan (or injected by tests)."""

    settings: Settings
    connector: RealtimeConnector
    fast_paths: FastPaths
    metrics: Metrics = field(default_factory=Metrics)
    pacer: Pacer = field(init=False)
    observer: CallObserver | None = None
    summariser: Summariser | None = None
    store: TicketReader | None = None
    memory: CallerMemory | None = None
    stream_secret: bytes = b""
    call_control: CallControl | None = None
    calls: CallLog | None = None
    outbound_pending: dict[str, float] = field(default_factory=dict)
    placements: dict[str, tuple[asyncio.Future[tuple[int, object]], float]] = field(default_factory=dict)
    """`POST /api/calls` by `request_id`: the answer (or its future) and when to forget it."""
    """Calls placed and neither streaming nor final yet: call sid -> when to stop counting it
    (loop time; a call whose callbacks never come must not hold a line for ever)."""
    active_calls: ActiveCalls = field(default_factory=ActiveCalls)
    calls_total: int = 0
    ready: bool = True

    def __post_init__(self) -> None:
        self.pacer = Pacer(self.metrics)
        for path in self.fast_paths.all():
            self.metrics.fast_path.labels(path.name).set(1 if path.active else 0)

    async def drain(self, timeout_s: float) -> None:
        """Graceful shutdown: take no new calls, let active ones finish, then end the rest politely.

        Each ended call closes its media websocket, so Twilio speaks the TwiML's end message; each
        bridge writes its ticket as it finishes, and this returns once every bridge is done.
        """
        self.ready = False
        log.info("draining: %d active calls, up to %.0f s", len(self.active_calls), timeout_s)
        if not await self.active_calls.wait_empty(timeout_s):
            for bridge in self.active_calls:
                bridge.hang_up("server shutting down")
            await self.active_calls.wait_empty()
        log.info("drained: every call has ended")


@asynccontextmanager
async def open_services(
    settings: Settings,
    *,
    connector: RealtimeConnector | None = None,
    observer: CallObserver | None = None,
    summariser: Summariser | None = None,
) -> AsyncIterator[Services]:
    """The app's services for as long as it runs; what is not injected is built from `settings`.

    Without an injected observer the real ticket service runs (store, retries, spool), and is
    drained and closed on the way out."""
    if connector is None:
        settings.check_serving()
    fast_paths = probe_fast_paths(settings.fast_paths)
    log.info("fast paths: %s", summary_line(fast_paths))
    client = compose.openai_client(settings)
    services = Services(
        settings=settings,
        connector=connector or compose.realtime_connector(settings, client, fast_paths),
        fast_paths=fast_paths,
        observer=observer,
        summariser=summariser if summariser is not None else compose.summariser(settings, client),
        stream_secret=_stream_secret(settings),
    )
    tickets = None
    if observer is None:
        tickets = await compose.Ticketing.open(settings, client)
        services.observer, services.store = tickets.service, tickets.store
        services.memory = compose.caller_memory(settings, tickets.store)
        services.calls = tickets.store
    services.call_control = compose.call_control(settings)
    try:
        yield services
    finally:
        services.ready = False
        await services.pacer.stop()
        if services.call_control is not None:
            await services.call_control.aclose()
        if tickets is not None:
            await tickets.close()


def _stream_secret(settings: Settings) -> bytes:
    if settings.twilio_auth_token is not None:
        return settings.twilio_auth_token.get_secret_value().encode()
    log.warning("no TWILIO_AUTH_TOKEN: stream tokens use a per-process secret (one replica only)")
    return secrets.token_bytes(32)
