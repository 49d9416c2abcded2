"""What the routes share for one app, and the small builder that makes it at start-up.

`open_services` builds the real adapters (through `callbot.compose`) for whatever a test did not
inject, and tears them down again at shutdown; `Services` is what the routes find on
`app.state.services`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

from callbot import compose
from callbot.adapters.fastpaths import FastPaths, probe_fast_paths, summary_line
from callbot.adapters.http_tools import HttpToolRunner
from callbot.bridge import CallBridge, Pacer, Whispers
from callbot.call_status import StatusReconciler
from callbot.core.call_lifecycle import status_overdue_s
from callbot.core.tool_config import ToolsConfig
from callbot.metrics import Metrics
from callbot.ports import (
    CallControl,
    CallerMemory,
    CallLog,
    CallObserver,
    RealtimeConnector,
    Summariser,
    TicketReader,
    ToolRunner,
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
    tools: ToolsConfig = field(default_factory=ToolsConfig)
    tool_runner: ToolRunner | None = None
    call_control: CallControl | None = None
    whispers: Whispers | None = None
    calls: CallLog | None = None
    outbound_pending: dict[str, float] = field(default_factory=dict)
    """Calls placed and neither streaming nor final yet: call sid -> when to stop counting it
    (loop time; a call whose callbacks never come must not hold a line for ever)."""
    placements: dict[str, tuple[asyncio.Future[tuple[int, object]], float]] = field(default_factory=dict)
    """`POST /api/calls` by `request_id`: the answer (or its future) and when to forget it."""
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
    call_control: CallControl | None = None,
) -> AsyncIterator[Services]:
    """The app's services for as long as it runs; what is not injected is built from `settings`.

    Without an injected observer the real ticket service runs (store, retries, spool), and is
    drained and closed on the way out."""
    if connector is None:
        settings.check_serving()
    tools = compose.load_tools(settings)  # a bad tools file stops the start, naming the entry
    fast_paths = probe_fast_paths(settings.fast_paths)
    log.info("fast paths: %s", summary_line(fast_paths))
    client = compose.openai_client(settings)
    own_call_control = call_control is None
    call_control = call_control or compose.call_control(settings)
    if call_control is None and (tools.end_call or tools.transfer_to):
        log.warning(
            "end_call and transfer_to_human need TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN: not offered"
        )
        tools = replace(tools, end_call=False, transfer_to=None)
    services = Services(
        settings=settings,
        connector=connector or compose.realtime_connector(settings, client, fast_paths),
        fast_paths=fast_paths,
        observer=observer,
        summariser=summariser if summariser is not None else compose.summariser(settings, client),
        stream_secret=_stream_secret(settings),
        tools=tools,
        tool_runner=HttpToolRunner() if tools.http else None,
        call_control=call_control,
        whispers=Whispers(settings.public_url + "/twilio/whisper") if settings.public_url else None,
    )
    tickets = None
    if observer is None:
        tickets = await compose.Ticketing.open(settings, client)
        services.observer, services.store = tickets.service, tickets.store
        services.memory = compose.caller_memory(settings, tickets.store)
        services.calls = tickets.store
    reconciler = _call_status_pass(services)
    try:
        yield services
    finally:
        services.ready = False
        if reconciler is not None:
            reconciler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconciler
        await services.pacer.stop()
        if tickets is not None:
            await tickets.close()
        if services.tool_runner is not None:
            await services.tool_runner.aclose()
        if services.call_control is not None and own_call_control:
            await services.call_control.aclose()


def _stream_secret(settings: Settings) -> bytes:
    if settings.twilio_auth_token is not None:
        return settings.twilio_auth_token.get_secret_value().encode()
    log.warning("no TWILIO_AUTH_TOKEN: stream tokens use a per-process secret (one replica only)")
    return secrets.token_bytes(32)


def _call_status_pass(services: Services) -> asyncio.Task[None] | None:
    """Where callbot places calls and keeps tickets: look up final statuses whose callback never
    came (callbot/call_status.py)."""
    if services.calls is None or services.call_control is None:
        return None
    settings = services.settings
    after_stream_s, after_start_s = status_overdue_s(
        settings.outbound_ring_timeout_s, settings.stream_token_ttl_s
    )
    reconciler = StatusReconciler(
        services.calls, services.call_control, after_stream_s=after_stream_s, after_start_s=after_start_s
    )
    return asyncio.get_running_loop().create_task(
        reconciler.run(settings.call_status_interval_s), name="call-status"
    )
