"""Twilio's outbound playback buffer, modelled closely enough to judge a bot's timing.

Twilio buffers whatever `media` the bot sends, plays it in order at 8000 bytes/s, and treats a
`mark` as a label in that buffer: the echo comes back when everything queued before it has
finished playing, at once if nothing is buffered, and immediately (as "cleared") on `clear`.
The bot's barge-in and "has the caller heard it yet" logic depends on exactly these rules, so the
simulator reproduces them on the same 20 ms clock it uses to send caller audio.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from callbot.caller.codec import FRAME_BYTES, FRAME_MS, SILENCE_BYTE

BURST_GAP_TICKS = 5
"""A gap of fewer than 5 empty ticks (< 100 ms) inside assistant audio is an underrun, not a pause."""


@dataclass(frozen=True)
class _QueuedMark:
    name: str


class PlaybackQueue:
    """Audio chunks and marks in arrival order; one `tick()` plays one 20 ms frame.

    A frame is cut from contiguous audio across message boundaries (Twilio plays a byte stream,
    not messages). When fewer than 160 bytes are buffered, the partial frame plays padded with
    silence. Marks passed while cutting a frame are echoed on the next tick, i.e. when that
    frame has finished playing.
    """

    def __init__(self) -> None:
        self._queue: deque[bytes | _QueuedMark] = deque()
        self._finishing: list[str] = []
        self._playing = False
        self.queued_bytes = 0

    @property
    def playing(self) -> bool:
        """True while the frame cut on the last tick had assistant audio in it."""
        return self._playing

    @property
    def empty(self) -> bool:
        """No audio waiting (marks alone do not count: they take no time to play)."""
        return self.queued_bytes == 0

    def enqueue_audio(self, data: bytes) -> None:
        """Append decoded-from-base64 mu-law bytes behind everything already queued."""
        if data:
            self._queue.append(bytes(data))
            self.queued_bytes += len(data)

    def enqueue_mark(self, name: str) -> bool:
        """Queue a mark; True means it must be echoed right now because nothing is buffered or playing."""
        if not self._queue and not self._finishing and not self._playing:
            return True
        self._queue.append(_QueuedMark(name))
        return False

    def clear(self) -> list[str]:
        """Drop all queued audio; return every pending mark name (to echo now, as cleared)."""
        pending = list(self._finishing)
        pending.extend(item.name for item in self._queue if isinstance(item, _QueuedMark))
        self._queue.clear()
        self._finishing = []
        self.queued_bytes = 0
        return pending

    def tick(self) -> tuple[bytes | None, list[str]]:
        """Play one frame: return (160 mu-law bytes or None if silent, marks whose audio just finished)."""
        echoes = self._finishing
        self._finishing = []
        while self._queue and isinstance(self._queue[0], _QueuedMark):
            head = self._queue.popleft()
            assert isinstance(head, _QueuedMark)
            echoes.append(head.name)
        frame = bytearray()
        while self._queue and len(frame) < FRAME_BYTES:
            item = self._queue[0]
            if isinstance(item, _QueuedMark):
                self._finishing.append(item.name)
                self._queue.popleft()
                continue
            take = min(FRAME_BYTES - len(frame), len(item))
            frame += item[:take]
            if take == len(item):
                self._queue.popleft()
            else:
                self._queue[0] = item[take:]
        self.queued_bytes -= len(frame)
        self._playing = bool(frame)
        if not frame:
            return None, echoes
        if len(frame) < FRAME_BYTES:
            frame += bytes([SILENCE_BYTE]) * (FRAME_BYTES - len(frame))
        return bytes(frame), echoes


@dataclass(frozen=True)
class PlaybackStats:
    """How smoothly the assistant's audio played.

    `late_frames` counts empty ticks inside a burst (assistant audio with gaps under 100 ms),
    i.e. moments the caller heard a dropout because the bot's audio arrived too late.
    `frame_lateness_ms` has one entry per played frame: how far behind its ideal slot it played,
    which is the sum of the dropouts earlier in the same burst. `late_at_ms` has one entry per
    late frame: how far into its burst (a reply, or what is left of one) the dropout came.
    """

    frames_played: int
    late_frames: int
    bursts: list[tuple[int, int]]
    frame_lateness_ms: list[int]
    late_at_ms: list[int] = field(default_factory=list)


def playback_stats(played: np.ndarray, clear_ticks: list[int]) -> PlaybackStats:
    """Derive bursts, underruns and per-frame lateness from the per-tick 'audio played' mask.

    A gap containing a `clear` never counts as an underrun: silence after a barge-in is intended.
    """
    ticks = np.flatnonzero(played)
    if len(ticks) == 0:
        return PlaybackStats(0, 0, [], [])
    cleared = np.zeros(len(played) + 1, dtype=bool)
    for tick in clear_ticks:
        if 0 <= tick < len(cleared):
            cleared[tick] = True
    bursts: list[tuple[int, int]] = []
    lateness: list[int] = []
    late = 0
    late_at: list[int] = []
    slip = 0
    start = int(ticks[0])
    prev = start
    lateness.append(0)
    for tick in ticks[1:]:
        tick = int(tick)
        gap = tick - prev - 1
        if 0 < gap < BURST_GAP_TICKS and not cleared[prev : tick + 1].any():
            late += gap
            late_at.extend((prev + 1 + k - start) * FRAME_MS for k in range(gap))
            slip += gap
        elif gap > 0:
            bursts.append((start * FRAME_MS, (prev + 1) * FRAME_MS))
            start = tick
            slip = 0
        lateness.append(slip * FRAME_MS)
        prev = tick
    bursts.append((start * FRAME_MS, (prev + 1) * FRAME_MS))
    return PlaybackStats(len(ticks), late, bursts, lateness, late_at)
