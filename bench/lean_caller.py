"""A lean Twilio Media Streams caller for the load benchmark: the simulator's behaviour, less Python.

`callbot.caller.simulator.TwilioCaller` runs one task for its 20 ms clock and one for its receiver per
call, goes through the `websockets` asyncio connection for every message, builds every media
message with orjson and keeps a recording. At 100+ concurrent calls that is more CPU than the
server under test spends. This module keeps the simulator's behaviour and bookkeeping but:

* places the call with the simulator itself (`LeanTwilioCaller` subclasses `TwilioCaller`: the
  same signed webhook POST, TwiML parsing and signed Media Streams URL), then opens the socket
  with `lean_ws.WsClient` (bench/lean_ws.py) instead of the `websockets` client;
* drives every call of the process from one `Ticker`: each call keeps its own 20 ms phase (the
  ticker serves 1 ms slots), so the server still sees frames spread over time, not in bursts;
* sends pre-built media messages: the script's clips are mu-law encoded (with the simulator's
  codec) and base64'd once per clip frame, and only sequenceNumber/chunk/timestamp/payload are
  filled into a per-call template;
* handles what the bot sends synchronously as it is read (`on_text`), with the simulator's
  checks (JSON text, known event, streamSid, base64 payload, no WAV header, mark names);
* models Twilio's playback buffer with byte counts instead of bytes (`LeanPlayback`, the same
  rules as `callbot.caller.playback.PlaybackQueue`) and walks the script with `LeanCursor`
  (the same rules as `callbot.caller.script.ScriptCursor`, for Say, Silence,
  WaitForAssistant, SayDuringAssistant and HangUp); tests/test_bench_load_side.py checks both
  against the simulator's classes step by step;
* keeps no recording; the playback statistics (late frames, lateness, bursts) come from the
  simulator's `playback_stats` on the same per-tick "played" mask.

The result is a `CallResult` with the fields the benchmark reads, plus the bench timestamps
(`LeanCall.extra()`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import random
import secrets
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import lean_ws
import numpy as np
import orjson

from callbot.caller.codec import FRAME_BYTES, FRAME_MS, mulaw_encode, silence_frame
from callbot.caller.playback import playback_stats
from callbot.caller.result import CallResult
from callbot.caller.script import HangUp, Say, SayDuringAssistant, Silence, Step, WaitForAssistant
from callbot.caller.simulator import USER_AGENT, TwilioCaller
from callbot.caller.stream import LATE_AFTER_STOP_S

SAMPLES_PER_FRAME = 160
FRAME_NS = FRAME_MS * 1_000_000
SILENCE_B64 = base64.b64encode(silence_frame())
_OUTBOUND_EVENTS = frozenset({"media", "mark", "clear"})

# ----------------------------------------------------------------------------- script


_CLIP_CACHE: dict[int, tuple[np.ndarray, list[bytes]]] = {}


def clip_payloads(pcm: np.ndarray) -> list[bytes]:
    """Base64 mu-law payload of each 20 ms frame of `pcm`, exactly as the simulator would send them
    (last frame zero-padded; an all-zero frame is sent as mu-law silence). Cached per clip object."""
    cached = _CLIP_CACHE.get(id(pcm))
    if cached is not None and cached[0] is pcm:
        return cached[1]
    out = []
    for pos in range(0, len(pcm), SAMPLES_PER_FRAME):
        frame = np.zeros(SAMPLES_PER_FRAME, dtype=np.int16)
        chunk = np.asarray(pcm[pos : pos + SAMPLES_PER_FRAME], dtype=np.int16)
        frame[: len(chunk)] = chunk
        payload = mulaw_encode(frame) if frame.any() else silence_frame()
        out.append(base64.b64encode(payload))
    _CLIP_CACHE[id(pcm)] = (pcm, out)  # keeps pcm alive so its id is not reused
    return out


_SAY, _SILENCE, _WAIT, _BARGE, _HANGUP = range(5)


class LeanCursor:
    """`ScriptCursor.advance` for the steps the benchmark uses, returning base64 payloads.

    `advance(tick, assistant_playing, queue_empty)` returns this tick's payload (bytes), or
    None when the script is over (a HangUp, or no steps left). `timeouts` counts waits that
    gave up, as ScriptCursor does.
    """

    def __init__(self, steps: Iterable[Step]) -> None:
        self._kind: list[int] = []
        self._frames: list[list[bytes]] = []
        self._arg: list[tuple[float, float]] = []
        for step in steps:
            frames: list[bytes] = []
            arg = (0.0, 0.0)
            if isinstance(step, Say):
                kind, frames = _SAY, clip_payloads(step.pcm8k)
            elif isinstance(step, Silence):
                kind, arg = _SILENCE, (float(step.ms), 0.0)
            elif isinstance(step, WaitForAssistant):
                kind, arg = _WAIT, (step.timeout_s * 1000, float(step.quiet_ms))
            elif isinstance(step, SayDuringAssistant):
                kind, frames, arg = (
                    _BARGE,
                    clip_payloads(step.pcm8k),
                    (float(step.after_ms), step.timeout_s * 1000),
                )
            elif isinstance(step, HangUp):
                kind = _HANGUP
            else:
                raise TypeError(f"the lean caller does not support {type(step).__name__} steps")
            self._kind.append(kind)
            self._frames.append(frames)
            self._arg.append(arg)
        self._index = 0
        self._begun = False
        self._step_tick = 0
        self._pos = 0
        self._heard = False
        self._quiet_ms = 0
        self._speech_start: int | None = None
        self._speaking = False
        self._cur_kind = _HANGUP
        self._cur_frames: list[bytes] = []
        self._cur_a = self._cur_b = 0.0
        self.timeouts = 0

    @property
    def done(self) -> bool:
        return self._index >= len(self._kind)

    def _begin(self, tick: int) -> None:
        i = self._index
        self._begun = True
        self._step_tick = tick
        self._pos = 0
        self._heard = False
        self._quiet_ms = 0
        self._speech_start = None
        self._speaking = False
        self._cur_kind = self._kind[i]
        self._cur_frames = self._frames[i]
        self._cur_a, self._cur_b = self._arg[i]

    def advance(self, tick: int, playing: bool, empty: bool) -> bytes | None:
        if self._begun:  # fast paths: the middle of a Silence or a Say
            kind = self._cur_kind
            if kind == _SILENCE:
                if (tick - self._step_tick) * FRAME_MS < self._cur_a:
                    return SILENCE_B64
            elif kind == _SAY:
                pos = self._pos
                if pos < len(self._cur_frames):
                    self._pos = pos + 1
                    return self._cur_frames[pos]
        while self._index < len(self._kind):
            if not self._begun:
                self._begin(tick)
            kind = self._cur_kind
            elapsed = (tick - self._step_tick) * FRAME_MS
            if kind == _SILENCE:
                if elapsed < self._cur_a:
                    return SILENCE_B64
            elif kind == _SAY:
                if self._pos < len(self._cur_frames):
                    self._pos += 1
                    return self._cur_frames[self._pos - 1]
            elif kind == _WAIT:
                if playing or not empty:
                    self._heard = True
                    self._quiet_ms = 0
                elif self._heard:
                    self._quiet_ms += FRAME_MS
                if not (self._heard and self._quiet_ms >= self._cur_b):
                    if elapsed >= self._cur_a:
                        self.timeouts += 1
                    else:
                        return SILENCE_B64
            elif kind == _BARGE:
                if not self._speaking:
                    if self._speech_start is None and playing:
                        self._speech_start = tick
                    if self._speech_start is not None:
                        self._speaking = (tick - self._speech_start) * FRAME_MS >= self._cur_a
                    elif elapsed >= self._cur_b:
                        self.timeouts += 1
                        self._speaking = True
                if not self._speaking:
                    return SILENCE_B64
                if self._pos < len(self._cur_frames):
                    self._pos += 1
                    return self._cur_frames[self._pos - 1]
            else:  # HangUp
                self._index += 1
                self._begun = False
                return None
            self._index += 1
            self._begun = False
        return None


# ----------------------------------------------------------------------------- network jitter


def jitter_schedule(
    seed: int, seconds: float, every_s: float, min_ms: int, max_ms: int, *, quiet_end_s: float = 1.0
) -> list[tuple[int, int]]:
    """When one caller stops reading its socket: [(tick, stall ms), ...], seeded, in tick order.

    Gaps between stalls are exponential with mean `every_s` (random moments, no rhythm shared by
    the calls), each stall lasts a uniform `min_ms`-`max_ms`, the next starts at least one tick
    after the previous ended, and none starts in the last `quiet_end_s` of the call (a stall
    across the hang-up would turn the bot's last messages into messages "after stop"). Bounded:
    at most one stall per tick of the call.
    """
    if every_s <= 0 or seconds <= 0 or max_ms <= 0:
        return []
    if not 0 < min_ms <= max_ms:
        raise ValueError(f"jitter stall range {min_ms}-{max_ms} ms is not a range of positive ms")
    rng = random.Random(f"jitter-{seed}")
    last_tick = int((seconds - quiet_end_s) * 1000 / FRAME_MS)
    out: list[tuple[int, int]] = []
    t_ms = 0.0
    while len(out) < last_tick:
        t_ms += rng.expovariate(1.0 / (every_s * 1000))
        tick = int(t_ms // FRAME_MS)
        if tick >= last_tick:
            break
        ms = rng.randint(min_ms, max_ms)
        out.append((tick, ms))
        t_ms = (tick + 1) * FRAME_MS + ms  # the next gap counts from this stall's end
    return out


# ----------------------------------------------------------------------------- playback


class LeanPlayback:
    """Twilio's playback buffer (`PlaybackQueue`'s rules) holding byte counts and mark names.

    The queue holds ints (bytes of audio) and strs (mark names) in arrival order; `tick()` plays
    up to 160 bytes and returns (audio played?, marks whose audio just finished).
    """

    __slots__ = ("_finishing", "_queue", "playing", "queued_bytes")

    def __init__(self) -> None:
        self._queue: deque[int | str] = deque()
        self._finishing: list[str] = []
        self.playing = False
        self.queued_bytes = 0

    @property
    def empty(self) -> bool:
        return self.queued_bytes == 0

    def enqueue_audio(self, nbytes: int) -> None:
        if nbytes:
            self._queue.append(nbytes)
            self.queued_bytes += nbytes

    def enqueue_mark(self, name: str) -> bool:
        """True: echo it now (nothing buffered or playing)."""
        if not self._queue and not self._finishing and not self.playing:
            return True
        self._queue.append(name)
        return False

    def clear(self) -> list[str]:
        pending = self._finishing
        pending.extend(item for item in self._queue if type(item) is str)
        self._queue.clear()
        self._finishing = []
        self.queued_bytes = 0
        return pending

    def tick(self) -> tuple[bool, list[str]]:
        queue = self._queue
        echoes = self._finishing
        if not queue:
            if echoes:
                self._finishing = []
            self.playing = False
            return False, echoes
        self._finishing = []
        while queue and type(queue[0]) is str:
            echoes.append(queue.popleft())  # type: ignore[arg-type]
        got = 0
        while queue and got < FRAME_BYTES:
            item = queue[0]
            if type(item) is str:
                self._finishing.append(item)
                queue.popleft()
                continue
            assert isinstance(item, int)
            take = FRAME_BYTES - got
            if item <= take:
                got += item
                queue.popleft()
            else:
                got += take
                queue[0] = item - take
        self.queued_bytes -= got
        self.playing = got > 0
        return self.playing, echoes


# ----------------------------------------------------------------------------- the clock


class Ticker:
    """One process-wide clock for every call: each call ticks every 20 ms at its own phase.

    Calls are kept in 20 slots of 1 ms by phase; the ticker wakes once per non-empty slot (at
    most 1000 times a second), ticks the calls due and sleeps until the next non-empty slot. A
    call whose tick is overdue (the loop was busy) ticks again at once, as the simulator's
    `sleep(delay<0)` would, so no frame is skipped.
    """

    SLOT_NS = 1_000_000
    SLOTS = FRAME_NS // SLOT_NS

    def __init__(self) -> None:
        self._slots: list[list[LeanCall]] = [[] for _ in range(self.SLOTS)]
        self._count = 0
        self._done = 0  # last absolute slot number served
        self._at = 0  # absolute slot number the timer is set for
        self._handle: asyncio.TimerHandle | None = None
        self.wakes = 0
        self.early_wakes = 0

    @property
    def active(self) -> int:
        return self._count

    def add(self, call: LeanCall) -> int:
        """Register a call; returns its tick-0 time (the next slot boundary, monotonic ns)."""
        now = time.monotonic_ns()
        slot = now // self.SLOT_NS + 1
        self._slots[slot % self.SLOTS].append(call)
        self._count += 1
        if self._handle is None:
            self._done = max(self._done, slot - 1)
            self._arm(slot)
        elif slot < self._at:
            self._handle.cancel()
            self._arm(slot)
        return slot * self.SLOT_NS

    def _arm(self, slot: int) -> None:
        # call_at on the loop's own clock: CLOCK_MONOTONIC for asyncio and uvloop alike. (A
        # call_later from time.monotonic_ns() would fire early on uvloop, whose timers count
        # whole milliseconds from its cached clock, and the ticker would spin until the slot.)
        self._at = slot
        self._handle = asyncio.get_running_loop().call_at(slot * self.SLOT_NS / 1e9, self._wake)

    def _wake(self) -> None:
        self._handle = None
        self.wakes += 1
        now = time.monotonic_ns()
        current = now // self.SLOT_NS
        if current < self._at:  # the loop's timer fired before the slot began
            self.early_wakes += 1
            self._arm(self._at)
            return
        slots, n = self._slots, self.SLOTS
        for absolute in range(max(self._done + 1, current - n + 1), current + 1):
            bucket = slots[absolute % n]
            if not bucket:
                continue
            keep = [call for call in bucket if call.run_ticks()]
            if len(keep) != len(bucket):
                self._count -= len(bucket) - len(keep)
                slots[absolute % n] = keep
        self._done = current
        if self._count:
            nxt = current + 1
            while not slots[nxt % n]:
                nxt += 1
            self._arm(nxt)


# ----------------------------------------------------------------------------- one call


class LeanCall(lean_ws.WsClient):
    """The Media Streams half of one call on a lean websocket (Twilio's side of the socket)."""

    close_timeout = 2.0
    timestamps = True

    def __init__(
        self,
        *,
        ticker: Ticker,
        account_sid: str,
        call_sid: str,
        stream_sid: str,
        cursor: LeanCursor,
        result: CallResult,
        max_call_s: float,
        stalls: list[tuple[int, int]] | None = None,
    ) -> None:
        super().__init__()
        self.ticker = ticker
        self.account_sid = account_sid
        self.call_sid = call_sid
        self.stream_sid = stream_sid
        self.cursor = cursor
        self.result = result
        self.playback = LeanPlayback()
        self.max_ticks = int(max_call_s * 1000 / FRAME_MS)
        self.seq = 0
        self.tick = 0
        self.t0_ns = time.monotonic_ns()  # until `begin` puts the call on the clock
        self.due_ns = 0
        self.started = False
        self.stopped = False
        self.stop_ns = 0
        self.closed = False
        self.played = bytearray()
        self.clear_ticks: list[int] = []
        self.send_ns = array("q")
        self.media_in_ns = array("q")
        self.clear_ns = array("q")
        self.stalls = list(stalls or ())
        """Network jitter: (tick, ms) at which this caller stops reading its socket for ms."""
        self._next_stall = self.stalls[0][0] if self.stalls else -1
        self._stall_index = 0
        self._resume: asyncio.TimerHandle | None = None
        self.stalled_ms = 0
        self.stalls_done = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        sid = stream_sid.encode("ascii")
        self._media_head = b'{"event":"media","streamSid":"' + sid + b'","media":{"payload":"'
        self._media = (
            b'{"event":"media","sequenceNumber":"%d","media":{"track":"inbound","chunk":"%d",'
            b'"timestamp":"%d","payload":"%s"},"streamSid":"' + sid + b'"}'
        )

    # ------------------------------------------------------------------ sending

    def send_event(self, message: dict[str, Any], numbered: bool = True) -> bool:
        if self.stopped or self.closed:
            return False
        if numbered:
            self.seq += 1
            message["sequenceNumber"] = str(self.seq)
        if not self.send_text(orjson.dumps(message)):
            self.closed = True
            return False
        return True

    def begin(self) -> None:
        """`connected` and `start` as Twilio sends them, then join the clock."""
        self.send_event({"event": "connected", "protocol": "Call", "version": "1.0.0"}, numbered=False)
        start = {
            "accountSid": self.account_sid,
            "streamSid": self.stream_sid,
            "callSid": self.call_sid,
            "tracks": ["inbound"],
            "customParameters": dict(self.result.custom_parameters),
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        }
        self.started = True
        self.result.stream_sid = self.stream_sid
        self.send_event({"event": "start", "start": start, "streamSid": self.stream_sid})
        self.t0_ns = self.due_ns = self.ticker.add(self)

    def run_ticks(self) -> bool:
        """Ticks that are due now (normally one); False once this call has left the clock."""
        now = time.monotonic_ns()
        due = self.due_ns
        while due <= now:
            if not self.one_tick(now):
                return False
            due += FRAME_NS
            if due <= now:  # the loop fell behind: catch up, as the simulator's tick loop does
                now = time.monotonic_ns()
        self.due_ns = due
        return True

    def one_tick(self, now: int) -> bool:
        """Play a frame, echo finished marks, let the script decide, send a frame (as the simulator)."""
        if self.closed:
            return False
        tick = self.tick
        if tick == self._next_stall:
            self.stall()
        playback = self.playback
        if playback._queue or playback._finishing:
            played, finished = playback.tick()
            for name in finished:
                self.echo_mark(name, float(tick * FRAME_MS), "played")
            self.played.append(played)
            payload = self.cursor.advance(tick, played, playback.queued_bytes == 0)
        else:  # nothing buffered: nothing plays (the common case)
            playback.playing = False
            self.played.append(0)
            payload = self.cursor.advance(tick, False, True)
        if payload is None:
            self.hang_up()
            return False
        if self.stopped or self.closed:
            return False
        self.seq += 1
        self.send_ns.append(now)
        if not self.send_text(self._media % (self.seq, tick + 1, tick * FRAME_MS, payload)):
            self.closed = True
            return False
        self.tick = tick = tick + 1  # frames sent so far
        if tick >= self.max_ticks:
            self.hang_up()
            return False
        return True

    def stall(self) -> None:
        """Stop reading the socket for this stall's ms (what the bot sends waits in the kernel's
        buffers, as behind a network hiccup), then drain it all at once. The 20 ms clock, the
        playback model and the caller's own frames go on: an empty buffer meanwhile is late frames."""
        ms = self.stalls[self._stall_index][1]
        self._stall_index += 1
        self._next_stall = self.stalls[self._stall_index][0] if self._stall_index < len(self.stalls) else -1
        transport = self.transport
        if transport is None or transport.is_closing() or self._resume is not None:
            return
        transport.pause_reading()
        self.stalls_done += 1
        self.stalled_ms += ms
        self._resume = asyncio.get_running_loop().call_later(ms / 1000, self.unstall)

    def unstall(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
            transport = self.transport
            if transport is not None and not transport.is_closing():
                transport.resume_reading()

    def echo_mark(self, name: str, ms: float, status: str) -> None:
        message = {"event": "mark", "streamSid": self.stream_sid, "mark": {"name": name}}
        if self.send_event(message):
            self.result.marks_echoed.append((name, ms, status))  # type: ignore[arg-type]

    def hang_up(self) -> None:
        """`stop`, then the closing handshake, unless the bot already closed."""
        if self.closed:
            return
        self.unstall()  # read the server's answer to the stop and its close frame
        stop = {
            "event": "stop",
            "streamSid": self.stream_sid,
            "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
        }
        self.send_event(stop)
        self.stopped = True
        self.stop_ns = time.monotonic_ns()
        if self.result.closed_by is None:
            self.result.closed_by = "caller"
        self.close(1000)

    # ------------------------------------------------------------------ receiving

    def violation(self, text: str, now_ns: int) -> None:
        self.result.violations.append(f"{(now_ns - self.t0_ns) / 1e6:.0f}ms: {text}")

    def on_text_bytes(self, raw: bytes, now_ns: int) -> None:
        """Check one message from the bot (as the simulator does) and apply it to the playback buffer."""
        if self.stopped:
            self.result.messages_after_stop += 1
            if now_ns - self.stop_ns > LATE_AFTER_STOP_S * 1e9:
                self.violation("message received well after stop", now_ns)
            return
        # The bridge's media messages, `{"event":"media","streamSid":"<ours>","media":{"payload":"<b64>"}}`,
        # are checked without a JSON parse: base64 has no quote, backslash or non-ASCII byte, so
        # when the strict decode accepts the middle, the message was exactly that JSON object.
        head = self._media_head
        if raw.startswith(head) and raw.endswith(b'"}}') and self.started:
            try:
                data = binascii.a2b_base64(raw[len(head) : -3], strict_mode=True)
            except (binascii.Error, ValueError):
                pass  # not that exact shape: the generic path below decides
            else:
                self.media_in_ns.append(now_ns)
                self.media_data(data, now_ns)
                return
        try:
            message = orjson.loads(raw)  # orjson also rejects invalid UTF-8
        except orjson.JSONDecodeError:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.invalid_utf8()  # fails the connection with 1007, as websockets would
                return
            self.violation(f"not JSON: {text[:60]!r}", now_ns)
            return
        if not isinstance(message, dict):
            self.violation("JSON message is not an object", now_ns)
            return
        event = message.get("event")
        if not self.started:
            self.violation(f"{event!r} sent before start", now_ns)
            return
        if event not in _OUTBOUND_EVENTS:
            self.violation(f"unexpected event {event!r} (only media/mark/clear may be sent)", now_ns)
            return
        if message.get("streamSid") != self.stream_sid:
            self.violation(
                f"{event} with streamSid {message.get('streamSid')!r}, expected {self.stream_sid}", now_ns
            )
            return
        ms = (now_ns - self.t0_ns) / 1e6
        if event == "media":
            self.media_in_ns.append(now_ns)
            self.handle_media(message, now_ns)
        elif event == "mark":
            self.handle_mark(message, ms, now_ns)
        else:
            self.clear_ns.append(now_ns)
            pending = self.playback.clear()
            self.result.clears.append(ms)
            self.clear_ticks.append(int(ms // FRAME_MS))
            for name in pending:
                self.echo_mark(name, ms, "cleared")

    def handle_media(self, message: dict[str, Any], now_ns: int) -> None:
        media = message.get("media")
        payload = media.get("payload") if isinstance(media, dict) else None
        if not isinstance(payload, str):
            self.violation("media without a string media.payload", now_ns)
            return
        try:
            data = binascii.a2b_base64(payload, strict_mode=True)
        except (binascii.Error, ValueError):
            self.violation("media payload is not valid base64", now_ns)
            return
        self.media_data(data, now_ns)

    def media_data(self, data: bytes, now_ns: int) -> None:
        """Queue outbound audio (decoded from base64) after the simulator's checks."""
        if not data:
            self.violation("empty media payload", now_ns)
            return
        if data[:4] in (b"RIFF", b".snd"):
            self.violation("media payload has a WAV/AU file header (Twilio would play it as noise)", now_ns)
        self.playback.enqueue_audio(len(data))
        result = self.result
        buffered_ms = self.playback.queued_bytes / 8.0
        if buffered_ms > result.max_buffered_ms:
            result.max_buffered_ms = buffered_ms
        result.frames_received += -(-len(data) // FRAME_BYTES)  # 20 ms frames: a message may hold several
        result.media_messages_received += 1
        result.bytes_received += len(data)

    def handle_mark(self, message: dict[str, Any], ms: float, now_ns: int) -> None:
        mark = message.get("mark")
        name = mark.get("name") if isinstance(mark, dict) else None
        if not isinstance(name, str) or not name:
            self.violation("mark without a mark.name", now_ns)
            return
        self.result.marks_received.append((name, ms))
        if self.playback.enqueue_mark(name):
            self.echo_mark(name, ms, "played")

    def on_close_frame(self, code: int | None, reason: str) -> None:
        if not self.stopped and self.result.closed_by is None:
            self.result.closed_by = "server"
        self.closed = True

    def on_closed(self) -> None:
        if not self.stopped and self.result.closed_by is None:
            self.result.closed_by = "server"
        self.closed = True
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        self.finish()
        if not self.done.done():
            self.done.set_result(None)

    def finish(self) -> None:
        result = self.result
        stats = playback_stats(np.frombuffer(bytes(self.played), dtype=bool), self.clear_ticks)
        result.frames_played = stats.frames_played
        result.late_frames = stats.late_frames
        result.frame_lateness_ms = stats.frame_lateness_ms
        result.late_at_ms = stats.late_at_ms
        result.bursts = stats.bursts
        result.frames_sent = self.tick
        result.script_timeouts = self.cursor.timeouts
        result.close_code = self.close_code
        result.duration_s = max(len(self.played), self.tick) * FRAME_MS / 1000.0

    def extra(self) -> dict[str, Any]:
        """The bench timestamps (CLOCK_MONOTONIC ns) load_bench.py joins with the fake's.

        `send_late_us[k]`: how late media frame k left against its tick (t0 + k x 20 ms)."""
        t0 = self.t0_ns
        return {
            "t0_ns": t0,
            "send_ns": list(self.send_ns),
            "send_late_us": [(t - t0 - k * FRAME_NS) // 1000 for k, t in enumerate(self.send_ns)],
            "media_in_ns": list(self.media_in_ns),
            "clear_ns": list(self.clear_ns),
            "stalls": self.stalls_done,
            "stalled_ms": self.stalled_ms,
        }


class LeanTwilioCaller(TwilioCaller):
    """The simulator's webhook and TwiML handling; the media stream runs on a `LeanCall`.

    `on_call` (if given) gets the finished LeanCall (for its timestamps) before `run` returns;
    `stalls` is the call's network-jitter schedule (`jitter_schedule`).
    """

    def __init__(
        self,
        base_url: str,
        *,
        ticker: Ticker,
        on_call: Callable[[LeanCall], None] | None = None,
        stalls: list[tuple[int, int]] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(base_url, **kw)
        self.ticker = ticker
        self.on_call = on_call
        self.stalls = stalls

    async def run_stream(self, stream_url: str, script: Any, result: CallResult) -> None:
        connect_url, headers = self.stream_connection(stream_url)
        headers = {"User-Agent": USER_AGENT, **headers}
        cursor = LeanCursor(script)

        def factory() -> LeanCall:
            return LeanCall(
                ticker=self.ticker,
                account_sid=self.account_sid,
                call_sid=self.call_sid,
                stream_sid="MZ" + secrets.token_hex(16),
                cursor=cursor,
                result=result,
                max_call_s=self.max_call_s,
                stalls=self.stalls,
            )

        try:
            call: LeanCall = await lean_ws.connect(factory, connect_url, headers, open_timeout=10)
        except lean_ws.HandshakeError as exc:
            if exc.status is None:
                raise OSError(str(exc)) from exc
            result.outcome = "ws_rejected"
            result.upgrade_status = exc.status
            result.error = f"WebSocket upgrade refused with HTTP {exc.status}"
            return
        call.begin()
        try:
            await call.done
        finally:
            if not call.done.done():
                call.abort()
            if self.on_call is not None:
                self.on_call(call)
