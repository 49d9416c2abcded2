"""The input audio buffer of one fake Realtime session: appends, the server VAD, commit, clear.

One part of `FakeSession`, sharing its `SessionCore`. Times are milliseconds on the session's
input timeline (all audio ever appended); a committed utterance becomes a user item through
the session's `ItemEvents`, and may start (or, on barge-in, cancel) a response.
"""

from __future__ import annotations

import binascii
from typing import Any, Protocol

from callbot.testing.fake_realtime_audio import PCM24K, AudioFormat, EnergyVad, audio_format
from callbot.testing.fake_realtime_items import ItemEvents
from callbot.testing.fake_realtime_responses import Responder
from callbot.testing.fake_realtime_state import ConvItem, SessionCore

SEMANTIC_SILENCE_MS = {"low": 1200, "medium": 800, "auto": 800, "high": 400}
BUFFER_KEEP_MS = 30_000
"""With VAD on and nobody speaking, older buffered audio is dropped to bound memory."""


class VadFactory(Protocol):
    def __call__(
        self,
        fmt: AudioFormat,
        *,
        threshold: float,
        prefix_padding_ms: int,
        silence_duration_ms: int,
        base_ms: float,
    ) -> EnergyVad: ...


class InputAudio:
    """`input_audio_buffer.*` for one session: the buffer, the VAD over it, and commits."""

    def __init__(
        self, core: SessionCore, items: ItemEvents, responder: Responder, new_vad: VadFactory
    ) -> None:
        self.core = core
        self.items = items
        self.responder = responder
        self._new_vad = new_vad
        self._buf = bytearray()
        self._buf_start_ms = 0.0
        self._vad: EnergyVad | None = None
        self._vad_key: tuple[Any, ...] | None = None
        self._speech_item: str | None = None
        self._speech_start_ms = 0.0

    def drop(self) -> None:
        """Forget the buffered audio (a finished session kept only for its records)."""
        self._buf = bytearray()

    def _turn_detection(self) -> dict[str, Any] | None:
        td: dict[str, Any] | None = self.core.config["audio"]["input"].get("turn_detection")
        return td

    def configure(self) -> None:
        """(Re)build the input format and VAD when their settings changed.

        A format change empties the input buffer (its bytes would be misread otherwise);
        changed VAD settings restart detection, so an utterance in progress is forgotten.
        """
        core = self.core
        fmt = audio_format(core.config["audio"]["input"].get("format")) or PCM24K
        if fmt != core.input_format:
            self._reset_buffer()
            core.input_format = fmt
        td = self._turn_detection()
        key: tuple[Any, ...] | None = None
        if td is not None:
            silence = td.get("silence_duration_ms") or 500
            if td.get("type") == "semantic_vad":
                silence = SEMANTIC_SILENCE_MS.get(str(td.get("eagerness")), 800)
            key = (fmt.type, td.get("threshold") or 0.5, td.get("prefix_padding_ms") or 0, silence)
        if key == self._vad_key:
            return
        self._vad_key = key
        self._speech_item = None
        self._vad = None
        if key is not None:
            self._vad = self._new_vad(
                fmt,
                threshold=key[1],
                prefix_padding_ms=key[2],
                silence_duration_ms=key[3],
                base_ms=self._timeline_ms,
            )

    @property
    def _timeline_ms(self) -> float:
        return self._buf_start_ms + self.core.input_format.ms(len(self._buf))

    def on_append(self, obj: dict[str, Any]) -> None:
        try:
            data = binascii.a2b_base64(obj["audio"], strict_mode=True)
        except (binascii.Error, ValueError, TypeError):
            self.core.error(
                "Invalid 'audio': not valid base64.",
                code="invalid_value",
                param="audio",
                event_id=obj.get("event_id"),
            )
            return
        self.append(data)

    def append(self, data: bytes) -> None:
        """The appended audio, decoded: buffer it and run the server VAD over it."""
        self._buf += data
        vad = self._vad
        if vad is None:
            return
        for kind, ms in vad.feed_audio(self.core.input_format, data):
            if kind == "start":
                self._speech_started(ms)
            else:
                self._speech_stopped(ms)
        if not vad.speaking and self.core.input_format.ms(len(self._buf)) > BUFFER_KEEP_MS:
            self._drop_buffer_until(self._timeline_ms - BUFFER_KEEP_MS / 3)

    def _drop_buffer_until(self, ms: float) -> None:
        n = max(0, min(len(self._buf), self.core.input_format.nbytes(ms - self._buf_start_ms)))
        del self._buf[:n]
        self._buf_start_ms += self.core.input_format.ms(n)

    def _buffer_slice(self, start_ms: float, end_ms: float) -> bytes:
        fmt = self.core.input_format
        a = max(0, min(len(self._buf), fmt.nbytes(start_ms - self._buf_start_ms)))
        b = max(a, min(len(self._buf), fmt.nbytes(end_ms - self._buf_start_ms)))
        return bytes(self._buf[a:b])

    def _speech_started(self, start_ms: int) -> None:
        self._speech_item = self.core.new_id("item")
        self._speech_start_ms = max(float(start_ms), self._buf_start_ms)
        self.core.emit(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": int(self._speech_start_ms),
                "item_id": self._speech_item,
            }
        )
        td = self._turn_detection() or {}
        if td.get("interrupt_response", True) and self.responder.active_inband is not None:
            self.responder.finish(self.responder.active_inband, "cancelled", "turn_detected")

    def _speech_stopped(self, end_ms: int) -> None:
        item_id = self._speech_item or self.core.new_id("item")
        self._speech_item = None
        self.core.emit(
            {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": end_ms, "item_id": item_id}
        )
        audio = self._buffer_slice(self._speech_start_ms, end_ms)
        self._drop_buffer_until(end_ms)
        td = self._turn_detection() or {}
        self._commit(item_id, audio, auto_response=bool(td.get("create_response", True)))

    def on_commit(self, obj: dict[str, Any]) -> None:
        ms = self.core.input_format.ms(len(self._buf))
        if ms < 100:
            self.core.error(
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {ms:.2f}ms of audio.",
                code="input_audio_buffer_commit_empty",
                event_id=obj.get("event_id"),
            )
            return
        item_id = self._speech_item or self.core.new_id("item")
        audio = bytes(self._buf)
        self._reset_buffer()
        self._commit(item_id, audio, auto_response=False)

    def on_clear(self, obj: dict[str, Any]) -> None:
        self._reset_buffer()
        self.core.emit({"type": "input_audio_buffer.cleared"})

    def _reset_buffer(self) -> None:
        self._buf_start_ms = self._timeline_ms
        self._buf.clear()
        self._speech_item = None
        if self._vad is not None:
            self._vad.skip_residual()
            self._vad.reset()

    def _commit(self, item_id: str, audio: bytes, *, auto_response: bool) -> None:
        """Turn audio into a user item: committed, item added/done, transcription, maybe a response."""
        self.core.emit(
            {
                "type": "input_audio_buffer.committed",
                "item_id": item_id,
                "previous_item_id": self.core.conversation.last_id(),
            }
        )
        progress = self.core.progress
        n = progress.utterances
        progress.utterances += 1
        item = ConvItem(
            data={
                "id": item_id,
                "object": "realtime.item",
                "type": "message",
                "role": "user",
                "status": "completed",
                "content": [{"type": "input_audio", "transcript": None}],
            },
            audio_ms=self.core.input_format.ms(len(audio)),
            audio_format=self.core.input_format,
            audio_bytes=audio if self.core.ctx.record_audio else None,
            heard_text=self.core.script.transcript_for(n),
        )
        self.items.add(item, None)
        transcribe = self.core.config["audio"]["input"].get("transcription") is not None
        respond = auto_response and self.responder.active_inband is None
        delay = transcribe and respond and self.core.script.transcript_after_response
        if transcribe and not delay:
            self.items.transcribe(item, n)
        if respond:
            resp = self.responder.start({}, event_id=None)
            if resp is not None and delay:
                resp.pending_transcriptions.append((item, n))
            elif delay:
                self.items.transcribe(item, n)
