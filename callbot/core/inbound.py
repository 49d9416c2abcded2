"""The caller's audio on its way to Realtime: batched, converted, and the session's audio clock.

Twilio sends 20 ms mu-law frames (docs/protocols.md §4.2). With `batch_frames` > 1 they are held
and appended together: fewer messages and resampler calls per call, at up to `batch_frames - 1`
frames of added delay. In `pcmu` mode a single frame goes out as Twilio's own base64, untouched.

The appended audio is also the session's input-audio clock: VAD events report positions on it
(`audio_start_ms`, `audio_end_ms`: audio appended since the session began, docs/protocols.md §9.1),
and `call_ms` puts such a position on the call's timeline.
"""

from __future__ import annotations

from typing import Any

import pybase64

from callbot.core import realtime as rt
from callbot.core import twilio as tw
from callbot.core.audio import InboundConverter
from callbot.core.playback import BYTES_PER_MS, FRAME_MS
from callbot.core.realtime import AudioMode


class CallerAudio:
    def __init__(self, mode: AudioMode, batch_frames: int, *, prefix_padding_ms: int) -> None:
        self.batch_frames = batch_frames
        self.prefix_padding_ms = prefix_padding_ms
        self._converter = InboundConverter(mode)
        self._pending: list[bytes] = []
        self._held_until: int | None = None  # when the held frames stop waiting (None: none held)
        self._last_ms = 0  # when the latest held frame arrived
        self._appended_bytes = 0  # mu-law bytes appended in this session
        self._appended_at_ms = 0  # when the latest appended audio arrived from Twilio

    @property
    def hold_ms(self) -> int:
        """Longest a held caller frame waits for its batch before `flush_if_held` sends it anyway."""
        return 2 * self.batch_frames * FRAME_MS

    def push(self, media: tw.Media, now_ms: int) -> dict[str, Any] | None:
        """One Twilio frame in; the `input_audio_buffer.append` to send now, if any."""
        if self.batch_frames == 1:
            self._appended_bytes += len(media.audio)
            self._appended_at_ms = now_ms
            if self._converter.passthrough:
                return rt.append(media.payload)  # forward Twilio's base64 untouched
            return self._append(self._converter.convert(media.audio))
        if not self._pending:
            self._held_until = now_ms + self.hold_ms  # asked on every pacer tick: kept, not computed
        self._pending.append(media.audio)
        self._last_ms = now_ms
        if len(self._pending) < self.batch_frames:
            return None
        return self.flush()

    def flush(self) -> dict[str, Any] | None:
        """The append of the frames held for a batch (a whole batch, or what is left at the end)."""
        if not self._pending:
            return None
        ulaw = b"".join(self._pending)
        self._pending.clear()
        self._held_until = None
        self._appended_bytes += len(ulaw)
        self._appended_at_ms = self._last_ms  # when the batch's last frame arrived
        return self._append(self._converter.convert(ulaw))

    def held_until_ms(self) -> int | None:
        """When the held frames stop waiting for the rest of their batch, or None if none are held."""
        return self._held_until

    def drop_held(self) -> None:
        """Forget held frames: stale by the time a new session is ready, dropped, not replayed."""
        self._pending.clear()
        self._held_until = None

    def new_session(self, now_ms: int) -> None:
        """A new Realtime session starts a new input-audio clock."""
        self._appended_bytes, self._appended_at_ms = 0, now_ms

    def call_ms(self, audio_ms: int) -> int:
        """Call time of a point on this session's input-audio clock (a VAD event's audio_*_ms).

        Caller audio is appended as it arrives from Twilio, in real time, so a point `d` ms
        before the end of what was appended was said `d` ms before that last append arrived.
        Measuring back from the latest append (not forward from the session's first) keeps any
        stall or gap in the stream out of the answer; a new session starts a new clock.
        """
        behind_ms = (self._appended_bytes - audio_ms * BYTES_PER_MS) // BYTES_PER_MS
        return max(0, self._appended_at_ms - behind_ms)

    def speech_started_ms(self, audio_start_ms: int) -> int:
        """Call time the caller's voice began: a speech_started's `audio_start_ms` includes the
        VAD's prefix padding (server VAD only), so the voice itself began that much later."""
        return self.call_ms(audio_start_ms + self.prefix_padding_ms)

    @staticmethod
    def _append(audio: bytes) -> dict[str, Any]:
        return rt.append(pybase64.b64encode_as_string(audio))
