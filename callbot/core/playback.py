"""What the caller has heard: outbound frame pacing, Twilio marks, and the barge-in cut point.

Twilio plays queued audio in order and echoes a `mark` once everything queued before it has
played, or at once after a `clear` (docs/protocols.md §4.4). So a mark echo is the only evidence of
what reached the caller's ear. Every mark name carries a generation number that changes on
each `clear`: an echo from an older generation means "discarded", not "played".

Frames are paced: we keep at most `lead_ms` of audio buffered at Twilio. A deep lead rides out
a stall of the caller's leg (Twilio keeps playing what it holds) and costs nothing on barge-in,
because `clear` empties Twilio's buffer. Audio leaves in media messages of up to `message_ms`
(Twilio takes any number of whole 20 ms frames in one message, docs/protocols.md §4.3), each
followed by a mark when `mark_interval_ms` equals the message size: one message and one mark per
100-200 ms of audio instead of one per 20 ms frame is most of the outbound per-message cost.
A message is only sent once it fits under the lead, so the buffer is topped up in whole messages.

A lead cannot cover a reply's first moments: only what has been generated can be queued. With
`prebuffer_ms`, audio that would start into Twilio's empty buffer waits until that much of it is
queued, its item's audio has ended, or it has waited that long: each reply then starts up to
`prebuffer_ms` later, with that much at Twilio to ride out a stall from its first frame.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import repeat

FRAME_MS = 20
FRAME_BYTES = 160  # 20 ms of mu-law at 8 kHz
BYTES_PER_MS = 8


@dataclass(slots=True)
class _SentMark:
    item_id: str
    item_bytes: int  # bytes of that item sent up to this mark
    start_bytes: int  # ... and up to the start of the message this mark ends


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One Twilio media message: whole 20 ms frames of one item, and the mark to send after it."""

    item_id: str
    audio: bytes
    frames: int
    mark: str | None


@dataclass(frozen=True, slots=True)
class Interruption:
    """The result of a barge-in: which item was playing and how much of it was heard."""

    item_id: str | None
    heard_ms: int
    twilio_had_audio: bool


class PlaybackTracker:
    """Paces frames to Twilio and turns mark echoes into heard milliseconds per assistant item.

    The defaults are the finest shape (one frame per message, a mark every 60 ms, 100 ms ahead);
    `callbot serve` sends larger messages with a deeper lead (settings.py).
    """

    def __init__(
        self,
        lead_ms: int = 100,
        mark_interval_ms: int = 60,
        max_queued_ms: int = 300_000,
        message_ms: int = FRAME_MS,
        prebuffer_ms: int = 0,
    ) -> None:
        self.lead_ms = lead_ms
        self.prebuffer_ms = prebuffer_ms
        self.prebuffer_frames = prebuffer_ms // FRAME_MS
        self.message_frames = max(1, message_ms // FRAME_MS)
        self.max_queued_frames = max(1, max_queued_ms // FRAME_MS)
        self.mark_interval_bytes = max(FRAME_BYTES, mark_interval_ms * BYTES_PER_MS)
        self._queue: deque[tuple[str, bytes]] = deque()
        self._generation = 0
        self._next_mark = 0
        self._marks: dict[str, _SentMark] = {}
        self._sent_bytes: dict[str, int] = {}
        self._heard_bytes: dict[str, int] = {}
        self._echo: tuple[str, int, int] | None = None  # the latest echo that moved heard: item, bytes, when
        self._message_start_bytes = 0  # item bytes sent before the message being built
        self._unmarked_bytes = 0
        self._last_item: str | None = None
        self._buffer_until_ms = 0  # when Twilio's buffer runs dry, by our estimate
        self._spans: dict[str, list[int]] = {}  # item -> [first frame plays, last frame ends]
        self._hold_until: int | None = None  # a start held for the prebuffer waits at most until then
        self._ended_item: str | None = None  # the latest item whose audio is all queued
        self.send_at: int | None = None
        """`next_send_ms()`, kept current by every change of the queue: read on each Twilio frame."""
        self.frames_sent = 0
        self.frames_dropped = 0
        self.frames_overflowed = 0

    # ----- producing -----
    def enqueue(self, item_id: str, frames: list[bytes]) -> None:
        """Queue frames to play; past the bound the oldest are dropped and counted, never unbounded."""
        self._queue.extend(zip(repeat(item_id), frames))  # (item, frame) pairs, without a generator
        excess = len(self._queue) - self.max_queued_frames
        for _ in range(excess):
            self._queue.popleft()
        if excess > 0:
            self.frames_dropped += excess
            self.frames_overflowed += excess
        self._schedule()

    def end_item(self, item_id: str) -> None:
        """All of the item's audio is queued: a start held for the prebuffer need not wait for more."""
        self._ended_item = item_id
        self._schedule()

    @property
    def queued_frames(self) -> int:
        return len(self._queue)

    def take_due(self, now_ms: int) -> list[tuple[str, bytes, str | None]]:
        """The frames of `take_messages`, each with the mark to send after it (or None)."""
        out: list[tuple[str, bytes, str | None]] = []
        for message in self.take_messages(now_ms):
            audio, last = message.audio, message.frames - 1
            for i in range(message.frames):
                frame = audio[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]
                out.append((message.item_id, frame, message.mark if i == last else None))
        return out

    def take_messages(self, now_ms: int) -> list[OutboundMessage]:
        """The media messages to send now, in order, each with the mark to send after it (or None).

        A message holds up to `message_ms` of one item's audio and goes out only once its last
        frame starts within the lead (Twilio then holds at most the lead plus one frame), so
        Twilio's buffer is topped up in whole messages; a shorter one (the queue ran dry, the item
        ends) goes as soon as it fits. With one frame per message this is frame-by-frame pacing.
        A message ends at a mark: after every `mark_interval_ms` of an item's audio, after the
        item's last queued frame and when the queue runs dry, so the heard position is known to
        within one message.
        """
        out: list[OutboundMessage] = []
        queue = self._queue
        if self.prebuffer_frames and queue and self._buffer_until_ms <= now_ms and self._holds(now_ms):
            self._schedule()
            return out
        until = max(self._buffer_until_ms, now_ms)
        horizon = now_ms + self.lead_ms
        while queue:
            item_id = queue[0][0]
            size = self._head_message_frames()
            if until + (size - 1) * FRAME_MS >= horizon:
                break  # the whole message does not fit under the lead yet
            frames: list[bytes] = []
            mark = None
            self._message_start_bytes = self._sent_bytes.get(item_id, 0)
            while mark is None and len(frames) < size:
                _, frame = queue.popleft()
                frames.append(frame)
                self._sent_bytes[item_id] = self._sent_bytes.get(item_id, 0) + len(frame)
                self._unmarked_bytes += len(frame)
                item_ends = not queue or queue[0][0] != item_id
                if item_ends or self._unmarked_bytes >= self.mark_interval_bytes:
                    mark = self._new_mark(item_id)
            start, until = until, until + len(frames) * FRAME_MS
            span = self._spans.get(item_id)
            if span is None:
                self._spans[item_id] = [start, until]
            else:
                span[1] = until
            out.append(OutboundMessage(item_id, b"".join(frames), len(frames), mark))
            self.frames_sent += len(frames)
        self._buffer_until_ms = until
        self._schedule()
        return out

    def _holds(self, now_ms: int) -> bool:
        """Whether audio starting into Twilio's empty buffer still waits for the prebuffer."""
        if not self._prebuffering():
            self._hold_until = None
            return False
        if self._hold_until is None:
            self._hold_until = now_ms + self.prebuffer_ms
        elif now_ms >= self._hold_until:
            self._hold_until = None  # waited long enough: generation is slower than the prebuffer
            return False
        return True

    def _prebuffering(self) -> bool:
        """Less than the prebuffer is queued and the head item's audio goes on."""
        queue = self._queue
        return len(queue) < self.prebuffer_frames and queue[0][0] != self._ended_item

    def next_send_ms(self) -> int | None:
        """The first `now_ms` at which `take_messages` sends something, or None with nothing queued.

        The message at the head of the queue goes once its last frame starts within the lead, so
        until then a tick has nothing to send and the caller may sleep (the bridge's pacer does).
        """
        return self.send_at

    def _schedule(self) -> None:
        """Set `send_at` after the queue or the buffer estimate changed."""
        if not self._queue:
            self.send_at = None
            return
        if self._hold_until is not None and self._prebuffering():
            self.send_at = self._hold_until
            return
        self.send_at = self._buffer_until_ms + (self._head_message_frames() - 1) * FRAME_MS - self.lead_ms + 1

    def _head_message_frames(self) -> int:
        """Frames of the next message, as far as they are queued: the head item's, up to `message_ms`."""
        queue, limit = self._queue, self.message_frames
        item_id, size = queue[0][0], 0
        for queued_item, _ in queue:
            if queued_item != item_id or size == limit:
                break
            size += 1
        return size

    def _new_mark(self, item_id: str) -> str:
        self._next_mark += 1
        name = f"g{self._generation}.{self._next_mark}"
        self._marks[name] = _SentMark(item_id, self._sent_bytes[item_id], self._message_start_bytes)
        self._unmarked_bytes = 0
        self._last_item = item_id
        return name

    # ----- feedback from Twilio -----
    def mark_echoed(self, name: str, *, at_ms: int | None = None) -> bool:
        """Record Twilio's echo of a mark; returns True if it means audio was played.

        `at_ms`, when the echo arrived, lets a barge-in estimate how far the caller has got into
        the next message since (`heard_bytes_at`); without it only echoed positions count."""
        sent = self._marks.pop(name, None)
        if sent is None or not name.startswith(f"g{self._generation}."):
            return False
        if sent.item_bytes > self._heard_bytes.get(sent.item_id, 0):
            self._heard_bytes[sent.item_id] = sent.item_bytes
            self._echo = (sent.item_id, sent.item_bytes, at_ms) if at_ms is not None else None
        return True

    def heard_bytes_at(self, item_id: str, now_ms: int) -> int:
        """How much of the item the caller has heard by `now_ms`.

        An echoed mark says the audio before it has played; Twilio then plays the next message
        at once and in real time, so the caller has since heard `now_ms - echo` ms more of it,
        but never more than that message holds (the next mark's position). With one mark per
        200 ms message this keeps the truncation point within network jitter of what was heard,
        where the echoed position alone lags it by up to a message. Before the item's first
        echo nothing counts as heard (docs/protocols.md §10.4)."""
        heard = self._heard_bytes.get(item_id, 0)
        echo = self._echo
        if echo is None or echo[0] != item_id or echo[1] != heard:
            return heard
        following = [
            m.item_bytes for m in self._marks.values() if m.item_id == item_id and m.start_bytes == heard
        ]
        if not following:
            return heard  # nothing sent after the echoed mark: what it says is all there is
        return min(following[0], heard + max(0, now_ms - echo[2]) * BYTES_PER_MS)

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

    def all_played(self) -> bool:
        """Nothing queued and no mark waiting for its echo: Twilio has played all it was sent."""
        return not self._queue and not self._marks

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
        heard = self.heard_bytes_at(item_id, now_ms) // BYTES_PER_MS if item_id else 0
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
        self._echo = None
        self._hold_until = None
        self.send_at = None  # the queue is empty
        return Interruption(item_id, heard, twilio_had_audio)

    def forget(self, item_id: str) -> None:
        """Drop per-item counters of an item that left the conversation."""
        self._sent_bytes.pop(item_id, None)
        self._heard_bytes.pop(item_id, None)
        self._spans.pop(item_id, None)
