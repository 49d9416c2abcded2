"""What the caller has heard: outbound frame pacing, Twilio marks, and the barge-in cut point.

Twilio plays queued audio in order and echoes a `mark` once everything queued before it has
played, or at once after a `clear` (docs/protocols.md §4.4). So a mark echo is the only evidence of
what reached the caller's ear. Every mark name carries a generation number that changes on
each `clear`: an echo from an older generation means "discarded", not "played".

Frames are paced: we keep at most `lead_ms` of audio buffered at Twilio, so a `clear` has
little to throw away and the mark echoes track playback closely.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

FRAME_MS = 20
FRAME_BYTES = 160  # 20 ms of mu-law at 8 kHz
BYTES_PER_MS = 8


@dataclass(slots=True)
class _SentMark:
    item_id: str
    item_bytes: int  # bytes of that item sent up to this mark


@dataclass(frozen=True, slots=True)
class Interruption:
    """The result of a barge-in: which item was playing and how much of it was heard."""

    item_id: str | None
    heard_ms: int
    twilio_had_audio: bool


class PlaybackTracker:
    """Paces frames to Twilio and turns mark echoes into heard milliseconds per assistant item."""

    def __init__(self, lead_ms: int = 100, mark_interval_ms: int = 60, max_queued_ms: int = 300_000) -> None:
        self.lead_ms = lead_ms
        self.max_queued_frames = max(1, max_queued_ms // FRAME_MS)
        self.mark_interval_bytes = max(FRAME_BYTES, mark_interval_ms * BYTES_PER_MS)
        self._queue: deque[tuple[str, bytes]] = deque()
        self._generation = 0
        self._next_mark = 0
        self._marks: dict[str, _SentMark] = {}
        self._sent_bytes: dict[str, int] = {}
        self._heard_bytes: dict[str, int] = {}
        self._unmarked_bytes = 0
        self._last_item: str | None = None
        self._buffer_until_ms = 0  # when Twilio's buffer runs dry, by our estimate
        self._spans: dict[str, list[int]] = {}  # item -> [first frame plays, last frame ends]
        self.frames_sent = 0
        self.frames_dropped = 0
        self.frames_overflowed = 0

    # ----- producing -----
    def enqueue(self, item_id: str, frames: list[bytes]) -> None:
        """Queue frames to play; past the bound the oldest are dropped and counted, never unbounded."""
        self._queue.extend((item_id, frame) for frame in frames)
        excess = len(self._queue) - self.max_queued_frames
        for _ in range(excess):
            self._queue.popleft()
        if excess > 0:
            self.frames_dropped += excess
            self.frames_overflowed += excess

    @property
    def queued_frames(self) -> int:
        return len(self._queue)

    def take_due(self, now_ms: int) -> list[tuple[str, bytes, str | None]]:
        """Frames to send now, each with the mark name to send after it (or None).

        A mark goes after every `mark_interval_ms` of an item's audio and after the item's
        last queued frame, so the heard position is known to within one interval.
        """
        out: list[tuple[str, bytes, str | None]] = []
        until = max(self._buffer_until_ms, now_ms)
        horizon = now_ms + self.lead_ms
        while self._queue and until < horizon:
            item_id, frame = self._queue.popleft()
            span = self._spans.get(item_id)
            if span is None:
                self._spans[item_id] = [until, until + FRAME_MS]
            else:
                span[1] = until + FRAME_MS
            until += FRAME_MS
            self._sent_bytes[item_id] = self._sent_bytes.get(item_id, 0) + len(frame)
            self._unmarked_bytes += len(frame)
            item_ends = not self._queue or self._queue[0][0] != item_id
            mark = None
            if item_ends or self._unmarked_bytes >= self.mark_interval_bytes:
                mark = self._new_mark(item_id)
            out.append((item_id, frame, mark))
        self._buffer_until_ms = until
        self.frames_sent += len(out)
        return out

    def _new_mark(self, item_id: str) -> str:
        self._next_mark += 1
        name = f"g{self._generation}.{self._next_mark}"
        self._marks[name] = _SentMark(item_id, self._sent_bytes[item_id])
        self._unmarked_bytes = 0
        self._last_item = item_id
        return name

    # ----- feedback from Twilio -----
    def mark_echoed(self, name: str) -> bool:
        """Record Twilio's echo of a mark; returns True if it means audio was played."""
        sent = self._marks.pop(name, None)
        if sent is None or not name.startswith(f"g{self._generation}."):
            return False
        if sent.item_bytes > self._heard_bytes.get(sent.item_id, 0):
            self._heard_bytes[sent.item_id] = sent.item_bytes
        return True

    def heard_ms(self, item_id: str) -> int:
        return self._heard_bytes.get(item_id, 0) // BYTES_PER_MS

    def sent_ms(self, item_id: str) -> int:
        return self._sent_bytes.get(item_id, 0) // BYTES_PER_MS

    def played_span(self, item_id: str) -> tuple[int, int] | None:
        """When the caller hears this item: (its first frame starts, its last frame sent ends).

        Twilio plays what it is sent in order and at once when its buffer is empty, so a frame
        plays when the frames before it have (our pacing clock, `until` in `take_due`); a
        frame leaves at most `lead_ms` before that. After a barge-in the end is the cut.
        """
        span = self._spans.get(item_id)
        return (span[0], span[1]) if span is not None else None

    def is_playing(self, now_ms: int) -> bool:
        """True while the caller may still be hearing (or about to hear) assistant audio."""
        return bool(self._queue) or bool(self._marks) or self._buffer_until_ms > now_ms

    def playing_item(self) -> str | None:
        """The assistant item whose audio is queued or not yet confirmed played."""
        unconfirmed = [m.item_id for m in self._marks.values()]
        if unconfirmed:
            return unconfirmed[0]
        if self._queue:
            return self._queue[0][0]
        return None

    # ----- barge-in -----
    def interrupt(self, now_ms: int) -> Interruption:
        """Drop everything not yet played and start a new mark generation.

        Returns the item that was playing and how much of it was heard, for the truncate.
        """
        item_id = self.playing_item()
        twilio_had_audio = bool(self._marks) or self._buffer_until_ms > now_ms
        for cut_item in {m.item_id for m in self._marks.values()} | {item_id}:
            span = self._spans.get(cut_item) if cut_item else None
            if span is not None and span[1] > now_ms:  # what was sent but not played is not heard
                span[1] = max(span[0], now_ms)
        self.frames_dropped += len(self._queue)
        self._queue.clear()
        self._marks.clear()
        self._generation += 1
        self._unmarked_bytes = 0
        self._buffer_until_ms = now_ms
        heard = self.heard_ms(item_id) if item_id else 0
        return Interruption(item_id, heard, twilio_had_audio)

    def forget(self, item_id: str) -> None:
        """Drop per-item counters of an item that left the conversation."""
        self._sent_bytes.pop(item_id, None)
        self._heard_bytes.pop(item_id, None)
        self._spans.pop(item_id, None)
