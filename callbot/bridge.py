"""Runs one phone call: pumps Twilio and Realtime events through the core and performs its actions.

Two pumps (Twilio in, Realtime in) run in an `asyncio.TaskGroup`; a process-wide `Pacer` ticks
every 20 ms and lets each call send the outbound frames that are due. Any failure inside a
call ends that call cleanly (both sockets closed, the record handed to the observer) and never
the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from callbot.core import realtime_events as rte
from callbot.core import twilio as tw
from callbot.core.actions import (
    Action,
    Checkpoint,
    ConnectRealtime,
    EndCall,
    ReconnectRealtime,
    RequestSummary,
    RunTool,
    SendRealtime,
    SendTwilio,
    UpdateCall,
)
from callbot.core.call import CallConfig, CallSession
from callbot.core.memory import MemorySeed
from callbot.core.realtime import AgentConfig
from callbot.core.record import CallRecord
from callbot.errors import CallGone, SummaryUnavailable, ToolFailed, TwilioRestError, UpstreamError
from callbot.logs import call_sid_var
from callbot.metrics import LATENCY_SAMPLE_EVERY, Metrics
from callbot.ports import (
    CallControl,
    CallerMemory,
    CallObserver,
    RealtimeConnector,
    RealtimeLink,
    Summariser,
    ToolRunner,
    TwilioLink,
)

log = logging.getLogger("callbot.bridge")


def _texts(actions: Sequence[Action]) -> list[str]:
    return [a.text for a in actions if isinstance(a, SendTwilio)]


TICK_S = 0.020
HOUSEKEEPING_TICKS = 25
"""Every this many ticks (500 ms) each call's deadlines (idle line, rollover, summaries) are checked."""
FRAMES_FLOW_S = 0.030
"""A call whose last Twilio media frame is younger than this is paced by its frames: the core sends
due agent audio on each one (call_twilio._on_media), so the pacer skips its check between slots."""


StartCheck = Callable[[tw.Start], str | None]
"""Returns a reason to refuse the stream (e.g. a bad per-call token), or None to accept."""

TOOL_DRAIN_S = 30.0
"""At hang-up, how long the tools still running may take to answer, so their outcome is on the
ticket (each has its own, shorter, timeout)."""


class Whispers:
    """The briefs of calls being transferred, by an unguessable token, for the whisper route
    (`/twilio/whisper/{token}`) that Twilio asks when the human answers (docs/call-control.md §3).

    Kept in this process: the route must be served by the replica that made the transfer."""

    def __init__(self, base_url: str, keep_s: float = 600.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._keep_s = keep_s
        self._briefs: dict[str, tuple[float, str]] = {}

    def url_for(self, token: str) -> str:
        return f"{self.base_url}/{token}"

    def put(self, token: str, brief: str) -> None:
        now = time.monotonic()
        self._briefs = {k: v for k, v in self._briefs.items() if v[0] > now}
        self._briefs[token] = (now + self._keep_s, brief)

    def get(self, token: str) -> str | None:
        entry = self._briefs.get(token)
        return entry[1] if entry is not None and entry[0] > time.monotonic() else None


@dataclass(frozen=True, slots=True)
class CallSetup:
    """What a `StartSetup` found for an accepted stream: the call's own agent and direction."""

    agent: AgentConfig | None = None
    direction: str = "inbound"
    refusal: str | None = None


StartSetup = Callable[[tw.Start], Awaitable[CallSetup]]
"""Looks up a call's own configuration once its stream's token passed (an outbound call's
instructions and context); a `refusal` ends the stream as a bad token does."""


class Pacer:
    """One 20 ms clock for every call in the process, instead of a timer task per call."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._calls: dict[CallBridge, int] = {}  # each call's housekeeping slot, 0..24
        self._added = 0
        self._task: asyncio.Task[None] | None = None
        self._metrics = metrics
        self.max_lag_ms = 0.0

    def __len__(self) -> int:
        """How many calls it paces now (bench/load_server.py reports it)."""
        return len(self._calls)

    def add(self, bridge: CallBridge) -> bool:
        """Start ticking for `bridge`; True the first time it is added."""
        if bridge in self._calls:
            return False
        self._calls[bridge] = self._added % HOUSEKEEPING_TICKS
        self._added += 1
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="pacer")
        return True

    def discard(self, bridge: CallBridge) -> None:
        self._calls.pop(bridge, None)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        ticks = 0
        while self._calls:
            next_at += TICK_S
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.max_lag_ms = max(self.max_lag_ms, -delay * 1000)
                next_at = loop.time()
            if self._metrics is not None:
                self._metrics.loop_lag.observe(max(0.0, loop.time() - next_at))
            ticks += 1
            await self.sweep(ticks)

    async def sweep(self, tick: int) -> None:
        """One tick: every call whose core has something due, and those whose housekeeping slot it is.

        A call with nothing to send only needs its deadlines checked (twice a second), and a
        playing one only when its next message fits under the lead (`next_wake_ms`, about every
        200 ms): skipping the rest saves a coroutine per call per 20 ms. While a call's Twilio
        frames keep coming, they pace it (`frame_at`) and only its slot's check is left. Each call
        has its own slot, so the checks are spread over the ticks instead of all landing on one,
        which showed as a burst of loop lag under load (bench/README.md#code-figures).
        """
        slot = tick % HOUSEKEEPING_TICKS
        flowing = time.monotonic() - FRAMES_FLOW_S
        for bridge, own_slot in list(self._calls.items()):
            if own_slot == slot or (bridge.frame_at < flowing and bridge.wake_due()):
                await bridge.on_tick()

    async def stop(self) -> None:
        self._calls.clear()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class CallBridge:
    """One call. Build it per Twilio websocket and `await run()`."""

    def __init__(
        self,
        twilio: TwilioLink,
        connector: RealtimeConnector,
        config: CallConfig,
        pacer: Pacer,
        *,
        observer: CallObserver | None = None,
        start_check: StartCheck | None = None,
        start_setup: StartSetup | None = None,
        summariser: Summariser | None = None,
        summary_model: str = "",
        metrics: Metrics | None = None,
        tool_runner: ToolRunner | None = None,
        call_control: CallControl | None = None,
        whispers: Whispers | None = None,
        memory: CallerMemory | None = None,
    ) -> None:
        self.twilio = twilio
        self.connector = connector
        self.session = CallSession(config)
        self.pacer = pacer
        self.observer = observer
        self.start_check = start_check
        self.start_setup = start_setup
        self.summariser = summariser
        self.summary_model = summary_model
        self.metrics = metrics
        self.tool_runner = tool_runner
        self.call_control = call_control
        self.whispers = whispers
        self._whisper_token = secrets.token_urlsafe(18)
        if whispers is not None:
            self.session.tools.whisper_url = whispers.url_for(self._whisper_token)
        self._tool_tasks: set[asyncio.Task[None]] = set()  # not cancelled at hang-up: awaited
        self.memory = memory
        self._recall: asyncio.Task[MemorySeed | None] | None = None
        self._inbound_count = 0
        self._later: asyncio.Task[None] | None = None
        """The sends a read callback (`_take_now`, `_take_realtime`) could not finish at once."""
        self._offer_failure: Exception | None = None
        self._outbound_count = 0
        self.realtime: RealtimeLink | None = None
        self.started_at = datetime.now(UTC)
        self._t0 = time.monotonic()
        self.frame_at = 0.0
        """time.monotonic() of the latest media frame handled in the read callback (`_take_now`)."""
        self._ended = asyncio.Event()
        self._over = False  # `_ended.is_set()` as an attribute: read per frame, where a call costs
        self._tasks: list[asyncio.Task[None]] = []
        self._tg: asyncio.TaskGroup | None = None
        self._saving: asyncio.Task[None] | None = None
        self._start_saved = False
        self._save_again = False
        self.ticket_id: int | None = None

    def now_ms(self) -> int:
        return int((time.monotonic() - self._t0) * 1000)

    def _end(self) -> None:
        self._over = True
        self._ended.set()

    def record(self, *, final: bool = False) -> CallRecord:
        s = self.session
        assert s.info is not None
        conv = s.conversation
        return CallRecord(
            info=s.info,
            started_at=self.started_at,
            ended_at=datetime.now(UTC) if final else None,
            transcript=conv.transcript(),
            summaries=tuple(conv.summaries),
            usage=conv.usage,
            realtime_model=s.config.agent.model,
            summary_model=self.summary_model,
            end_reason=s.end_reason or "",
            tool_calls=s.tools.events(self.now_ms() if final else None),
            memory_ticket_ids=s.memory_ticket_ids,
            response_usage=tuple(conv.response_usages),
        )

    # ----- lifecycle -----
    def hang_up(self, reason: str) -> None:
        """End the call from outside (graceful shutdown): Twilio then speaks the end message."""
        self.session.end(reason)
        self._end()

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                self._spawn(self._twilio_pump(), "twilio-in")
                await self._ended.wait()
                for task in self._tasks:
                    task.cancel()
        finally:
            await self._shutdown()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        assert self._tg is not None
        task = self._tg.create_task(self._guard(coro, name), name=name)
        # A task cancelled before its first step never awaits `coro`: close it (no-op once run).
        task.add_done_callback(lambda _: coro.close())
        self._tasks = [t for t in self._tasks if not t.done()]  # long calls spawn many summaries
        self._tasks.append(task)
        return task

    async def _guard(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run a pump; an unexpected error ends this call (with its traceback logged), not the process."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; ending the call", name)
            await self._perform(self.session.end(f"internal error in {name}"))
            self._end()

    async def _shutdown(self) -> None:
        self.pacer.discard(self)
        self.twilio.offer_to(None)
        if self._recall is not None and not self._recall.done():
            self._recall.cancel()
        if self.realtime is not None:
            await self.realtime.close()
        await self.twilio.close()
        if self.session.phase != "ended":
            self.session.end("connection closed")
        await self._drain_tools()
        if self._saving is not None:
            with contextlib.suppress(Exception):
                await self._saving
        if self.session.info is not None:
            record = self.record(final=True)
            if self.metrics is not None:
                self.metrics.call_finished(
                    record.end_reason,
                    record.duration_s or 0.0,
                    self.session.stats,
                    len(record.summaries),
                    (record.usage.input_tokens, record.usage.output_tokens),
                )
            if self.observer is not None:
                try:
                    self.ticket_id = await self.observer.call_ended(record)
                except Exception:
                    log.exception("could not hand the finished call to the ticket service")
        log.info(
            "call ended: %s (%d turns, %d barge-ins, %d invalid Twilio messages)",
            self.session.end_reason,
            len(self.session.conversation.turns()),
            self.session.stats.barge_ins,
            self.session.stats.invalid_twilio,
        )

    # ----- pumps -----
    async def _twilio_pump(self) -> None:
        self.twilio.offer_to(self._take_now)
        while not self._over:
            text = await self.twilio.recv()
            failure = self._offer_failure
            if failure is not None:  # `_take_now` failed on this message: end the call as any pump
                raise failure
            if text is None:  # after callbot's own hang-up or transfer that is expected, and says so
                reason = self.session.tools.stop_reason or "Twilio websocket closed"
                await self._perform(self.session.end(reason))
                return
            event = tw.parse(text)
            if type(event) is tw.Start and self.session.phase == "awaiting_start":
                # only the first start opens a call; the core logs and ignores any later one
                call_sid_var.set(event.call_sid)
                refusal = self.start_check(event) if self.start_check else None
                if refusal is None and self.start_setup is not None:
                    setup = await self.start_setup(event)
                    refusal = setup.refusal
                    if setup.agent is not None:
                        self.session.set_up_call(setup.agent, setup.direction)
                if refusal is not None:
                    await self._perform(self.session.refuse_stream(refusal))
                    return
            started = self._inbound_clock(event)
            actions = self.session.receive_twilio(event, self.now_ms())
            if actions:
                await self._after_later()
                rest = self._perform_now(actions)
                if rest:
                    await self._finish(rest)
            if started:
                self._inbound_timed(started)

    def _take_now(self, text: str) -> bool:
        """Handle a media frame or mark echo inside the socket's read callback (the Twilio socket
        offers each message while this pump waits for one, so it comes after everything before
        it): most frames only join a batch, and this saves the pump's task a wake-up for each.
        A send that has to wait finishes in a task of its own, and until it has, messages go to
        the pump again, which awaits it first: the order of what goes out never changes. Other
        messages (start, stop, DTMF) go to the pump. False: the pump gets the message."""
        if not self._may_take():
            return False
        try:
            event = tw.parse(text)
            if type(event) is not tw.Media and type(event) is not tw.Mark:
                return False  # parsed again by the pump: these come a few times a call
            started = self._inbound_clock(event)
            self.frame_at = now = time.monotonic()  # one clock read for the pacer and `now_ms`
            actions = self.session.receive_twilio(event, int((now - self._t0) * 1000))
            if actions:
                self._perform_or_defer(actions, "twilio-out")
            if started:
                self._inbound_timed(started)
        except Exception as exc:  # noqa: BLE001 - raised in the pump instead, which ends the call (`_guard`)
            self._offer_failure = exc
            return False
        return True

    def _inbound_clock(self, event: tw.TwilioEvent) -> float:
        """One media frame in LATENCY_SAMPLE_EVERY is timed; reading the clock for the other 24 is a
        cost per frame for nothing. Returns the start time, or 0.0 when this one is not timed."""
        self._inbound_count += 1
        if self.metrics is None or self._inbound_count % LATENCY_SAMPLE_EVERY or type(event) is not tw.Media:
            return 0.0
        return time.perf_counter()

    def _inbound_timed(self, started: float) -> None:
        if self.metrics is not None:
            self.metrics.inbound_latency.observe(time.perf_counter() - started)

    async def _realtime_pump(self, link: RealtimeLink) -> None:
        """Feeds one link's events to the core; a link replaced by a reconnect goes quiet."""
        link.offer_to(self._take_realtime)
        while not self._over:
            try:
                raw = await link.recv()
            except UpstreamError as exc:
                if link is self.realtime:
                    await self._perform(self.session.realtime_closed(str(exc), self.now_ms()))
                return
            if link is not self.realtime:
                return
            failure = self._offer_failure
            if failure is not None:  # `_take_realtime` or `_take_now` failed: end the call as any pump
                raise failure
            started = time.perf_counter()
            actions, timed = self._step_realtime(raw)
            if actions:
                await self._after_later()
                rest = self._perform_now(actions)
                if rest:
                    await self._finish(rest)
            if timed:
                self._outbound_timed(started)

    async def _after_later(self) -> None:
        """Wait for what a read callback left to send (`_later`) before a pump sends. It stays set
        while it runs, so both read callbacks decline their messages meanwhile (to their pumps,
        which wait here too) and nothing overtakes it."""
        later = self._later
        if later is not None:
            await later
            if self._later is later:
                self._later = None

    def _take_realtime(self, raw: dict[str, Any]) -> bool:
        """Handle a Realtime event inside the socket's read callback, as `_take_now` does for
        Twilio's frames: the link offers each event while this call's Realtime pump waits for
        one (so it comes after everything before it), which saves the pump's task a wake-up per
        event. A send that has to wait finishes in a task of its own (`_later`), and until it
        has, events go to the pump again. False: the pump gets the event."""
        if not self._may_take():
            return False
        try:
            started = time.perf_counter()
            actions, timed = self._step_realtime(raw)
            if actions:
                self._perform_or_defer(actions, "realtime-out")
            if timed:
                self._outbound_timed(started)
        except Exception as exc:  # noqa: BLE001 - raised in the pump instead, which ends the call (`_guard`)
            self._offer_failure = exc
            return False
        return True

    def _step_realtime(self, raw: dict[str, Any]) -> tuple[list[Action], bool]:
        """One Realtime event into the core: its actions, and whether it is timed (an audio delta
        in five, `_outbound_timed`)."""
        event = rte.parse(raw)
        timed = False
        if self.metrics is not None and type(event) is rte.AudioDelta:
            self._outbound_count += 1
            timed = self._outbound_count % 5 == 0  # deltas are ~5x rarer than frames
        return self.session.receive_realtime(event, self.now_ms()), timed

    def _outbound_timed(self, started: float) -> None:
        if self.metrics is not None:
            self.metrics.outbound_latency.observe(time.perf_counter() - started)

    def _may_take(self) -> bool:
        """Whether a read callback (`_take_now`, `_take_realtime`) may handle a message now: the
        call goes on, nothing failed there, and what one of them left to send (`_later`) is done."""
        if self._over or self._offer_failure is not None:
            return False
        later = self._later
        if later is not None:
            if not later.done():
                return False
            self._later = None
        return True

    def _perform_or_defer(self, actions: list[Action], name: str) -> None:
        """In a read callback: perform what needs no waiting, and leave the rest to a task
        (`_later`), which later messages wait for."""
        rest = self._perform_now(actions)
        if rest:
            self._later = self._spawn(self._finish(rest), name)

    def _start_recall(self) -> asyncio.Task[MemorySeed | None] | None:
        """Look the caller's memory up once, beside the first Realtime connect (core/memory.py)."""
        if self._recall is None and self.memory is not None and self.session.info is not None:
            self._recall = asyncio.get_running_loop().create_task(
                self.memory.recall(self.session.info), name="memory-recall"
            )
        return self._recall

    async def _take_memory(self) -> None:
        """Hand the looked-up memory to the core before the session is configured. The lookup has
        its own short timeout and never raises (ticketing.CallerMemoryService)."""
        recall = self._recall
        if recall is None or self.session.memory is not None:
            return
        try:
            seed = await recall
        except Exception:
            log.exception("memory lookup failed; the call goes on without it")
            return
        self.session.set_memory(seed)

    def _checkpoint_start(self) -> None:
        """The call's first ticket save, once, as soon as its start is accepted: a replica killed
        while Realtime or the memory lookup is still answering leaves an `in_progress` ticket that
        a live replica finishes (ticketing.py, replica leases), not nothing. It runs beside the
        connect, so the database never delays the greeting."""
        if self._start_saved or self.observer is None or self.session.info is None:
            return
        self._start_saved = True
        observer, record = self.observer, self.record()

        async def save() -> None:
            try:
                await observer.call_started(record)
            except Exception:
                log.exception("ticket service failed at call start; the call goes on")

        self._spawn(save(), "ticket-start")

    async def _connect_realtime(self, delay_ms: int = 0) -> None:
        self._start_recall()
        self._checkpoint_start()
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        try:
            link = await self.connector.connect()
        except UpstreamError as exc:
            log.error("%s", exc)
            await self._perform(self.session.realtime_connect_failed(str(exc), self.now_ms()))
            return
        if self._over:
            await link.close()
            return
        self.realtime = link
        self._spawn(self._realtime_pump(link), "realtime-in")
        first = self.pacer.add(self)
        await self._take_memory()
        if first and self.observer is not None and self.session.info is not None:
            await self.observer.call_progress(self.record())  # names the memory that seeded the call
        await self._perform(self.session.realtime_connected(self.now_ms()))

    async def _reconnect(self, action: ReconnectRealtime) -> None:
        """Close the old link (its pump goes quiet), then open a fresh session after the backoff."""
        old, self.realtime = self.realtime, None
        if old is not None:
            await old.close()
        log.info("reconnecting to Realtime in %d ms (%s)", action.delay_ms, action.reason)
        await self._connect_realtime(action.delay_ms)

    def wake_due(self) -> bool:
        """The core has audio due by now (`next_wake_ms`); a tick early is harmless, one late is not."""
        wake = self.session.next_wake_ms()
        return wake is not None and wake <= self.now_ms() + 1

    async def on_tick(self) -> None:
        if not self._over:
            actions = self.session.tick(self.now_ms())
            if actions and (rest := self._perform_now(actions)):
                await self._finish(rest)

    # ----- actions -----
    def _perform_now(self, actions: Sequence[Action]) -> list[Action]:
        """Perform actions in order for as long as none has to wait; return the rest, from the
        first send its socket cannot take now (back-pressure, an earlier send still waiting, no
        fast path), for `_finish`. Consecutive Twilio messages go out in one write."""
        i, n = 0, len(actions)
        while i < n:
            action = actions[i]
            if isinstance(action, SendTwilio):
                j = i + 1
                while j < n and isinstance(actions[j], SendTwilio):
                    j += 1
                if not self.twilio.send_now(_texts(actions[i:j])):
                    return list(actions[i:])
                i = j
                continue
            if isinstance(action, SendRealtime):
                link = self.realtime
                if link is not None:
                    try:
                        if not link.send_now(action.event):
                            return list(actions[i:])
                    except UpstreamError as exc:
                        rest = self._perform_now(self.session.realtime_closed(str(exc), self.now_ms()))
                        if rest:
                            return rest + list(actions[i + 1 :])
            elif isinstance(action, ConnectRealtime):
                self._spawn(self._connect_realtime(), "realtime-connect")
            elif isinstance(action, Checkpoint):
                self._checkpoint()
            elif isinstance(action, ReconnectRealtime):
                self._spawn(self._reconnect(action), "realtime-reconnect")
            elif isinstance(action, RequestSummary):
                self._spawn(self._summarise(action), "summariser")
            elif isinstance(action, RunTool):
                self._spawn_tool(self._run_tool(action), f"tool-{action.call.name}")
            elif isinstance(action, UpdateCall):
                self._spawn_tool(self._update_call(action), "call-update")
            elif isinstance(action, EndCall):
                log.info("ending call: %s", action.reason)
                self._end()
            i += 1
        return []

    async def _finish(self, actions: list[Action]) -> None:
        """Perform what `_perform_now` left: await the send at its head, then go on."""
        while actions:
            first, j = actions[0], 1
            if isinstance(first, SendTwilio):
                while j < len(actions) and isinstance(actions[j], SendTwilio):
                    j += 1
                await self.twilio.send(_texts(actions[:j]))
                rest = actions[j:]
            else:
                assert isinstance(first, SendRealtime)  # only sends are left for later
                rest = actions[1:]
                if self.realtime is not None:
                    try:
                        await self.realtime.send(first.event)
                    except UpstreamError as exc:
                        rest = self.session.realtime_closed(str(exc), self.now_ms()) + rest
            actions = self._perform_now(rest)

    async def _perform(self, actions: Sequence[Action]) -> None:
        rest = self._perform_now(actions)
        if rest:
            await self._finish(rest)

    # ----- tools (decisions in core/tools.py) -----
    def _spawn_tool(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """A task of this call beside the pumps, so a slow tool holds up neither the audio nor other
        calls. Outside the task group: hanging up does not cancel it, `_drain_tools` awaits it."""
        task = asyncio.get_running_loop().create_task(self._guard_tool(coro, name), name=name)
        self._tool_tasks.add(task)
        task.add_done_callback(self._tool_tasks.discard)

    async def _guard_tool(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed", name)

    async def _run_tool(self, action: RunTool) -> None:
        call, tool = action.call, action.tool
        started = time.perf_counter()
        output: str | None = None
        error: str | None = None
        outcome: Any = "ok"
        if self.tool_runner is None:
            error, outcome = "tools are not available on this server", "error"
        else:
            try:
                output = await self.tool_runner.run(tool, call.arguments)
            except ToolFailed as exc:
                error, outcome = str(exc), "timeout" if exc.timed_out else "error"
        log.info(
            "tool %s (%s): %s in %.0f ms",
            tool.name,
            call.call_id,
            outcome,
            (time.perf_counter() - started) * 1000,
        )
        await self._perform_live(
            self.session.tool_result(call.call_id, output, error, outcome, self.now_ms())
        )

    async def _update_call(self, action: UpdateCall) -> None:
        """End or redirect the live call through Twilio's REST API (docs/call-control.md §2, §3)."""
        info = self.session.info
        if action.brief is not None and self.whispers is not None:
            self.whispers.put(self._whisper_token, action.brief)
        try:
            if self.call_control is None or info is None:
                raise TwilioRestError("Twilio's REST API is not configured (TWILIO_ACCOUNT_SID)")
            await self.call_control.update_call(info.call_sid, action.update)
        except CallGone:
            log.info("the call was already gone when callbot updated it")
        except TwilioRestError as exc:
            log.error("call update failed: %s", exc)
            if action.update.status == "completed":
                # the hang-up failed: closing the stream makes Twilio play the TwiML's end message
                await self._perform(self.session.end(f"agent ended the call; the REST hang-up failed: {exc}"))
            await self._perform_live(self.session.call_update_failed(action.call_id, str(exc), self.now_ms()))

    async def _perform_live(self, actions: list[Action]) -> None:
        """Perform what a tool's answer asks, unless the call has ended meanwhile."""
        if not self._over:
            await self._perform(actions)

    async def _drain_tools(self) -> None:
        """Let running tools answer (their outcome belongs on the ticket), within bounds."""
        pending = set(self._tool_tasks)
        if not pending:
            return
        _done, late = await asyncio.wait(pending, timeout=TOOL_DRAIN_S)
        for task in late:
            task.cancel()

    async def _summarise(self, action: RequestSummary) -> None:
        """Runs beside the pumps: audio keeps flowing and the caller never waits for it."""
        request = action.request
        if self.summariser is None:
            await self._perform(
                self.session.summary_failed(request.summary_id, "no summariser", self.now_ms())
            )
            return
        try:
            text = await self.summariser.summarise(request)
        except SummaryUnavailable as exc:
            await self._perform(self.session.summary_failed(request.summary_id, str(exc), self.now_ms()))
            return
        log.info("summary %s ready: folding %d turns", request.summary_id, request.turns_folded)
        await self._perform(self.session.receive_summary(request.summary_id, text, self.now_ms()))

    def _checkpoint(self) -> None:
        """Save the transcript so far without blocking the call; coalesce bursts of turns."""
        if self.observer is None or self.session.info is None:
            return
        if self._saving is not None and not self._saving.done():
            self._save_again = True
            return
        self._saving = asyncio.get_running_loop().create_task(self._save_progress())

    async def _save_progress(self) -> None:
        assert self.observer is not None
        while True:
            self._save_again = False
            try:
                await self.observer.call_progress(self.record())
            except Exception:
                log.exception("could not save call progress; will retry at the next turn")
            if not self._save_again:
                return
