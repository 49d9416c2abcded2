"""Audio plumbing for the fake Realtime server: G.711 mu-law, format math and an energy VAD.

The fake keeps its own tiny mu-law codec (rather than importing `callbot.core.audio`) so the
test double never depends on the code it is used to test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from callbot.testing.speech import synth_speech


def _build_ulaw_tables() -> tuple[np.ndarray, np.ndarray]:
    """Decode table (256 entries) and encode table (65536 entries, indexed by uint16 view)."""
    codes = np.arange(256, dtype=np.int32)
    inv = ~codes & 0xFF
    exponent = (inv >> 4) & 0x07
    mantissa = inv & 0x0F
    magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84
    decode = np.where(inv & 0x80, -magnitude, magnitude).astype(np.int16)

    # Encoder in the classic 14-bit formulation (Sun g711.c, also what CPython's audioop did),
    # so our bytes match other G.711 implementations bit for bit.
    samples = np.arange(-32768, 32768, dtype=np.int32)
    s14 = samples >> 2
    negative = s14 < 0
    mag = np.minimum(np.where(negative, -s14, s14), 8159) + 0x21
    seg = np.searchsorted(np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF]), mag)
    uval = np.where(seg >= 8, 0x7F, (seg << 4) | ((mag >> (seg + 1)) & 0x0F))
    enc = np.where(negative, uval ^ 0x7F, uval ^ 0xFF)
    encode = np.empty(65536, dtype=np.uint8)
    encode[samples.astype(np.int16).view(np.uint16)] = enc.astype(np.uint8)
    decode.setflags(write=False)
    encode.setflags(write=False)
    return decode, encode


_ULAW_DECODE, _ULAW_ENCODE = _build_ulaw_tables()


def ulaw_decode(data: bytes) -> np.ndarray:
    """G.711 mu-law bytes -> int16 samples."""
    return _ULAW_DECODE[np.frombuffer(data, dtype=np.uint8)]


def ulaw_encode(samples: np.ndarray) -> bytes:
    """int16 samples -> G.711 mu-law bytes."""
    return bytes(_ULAW_ENCODE[np.asarray(samples, dtype=np.int16).view(np.uint16)])


@dataclass(frozen=True, slots=True)
class AudioFormat:
    """One of the GA `RealtimeAudioFormats` the fake can speak."""

    type: str  # "audio/pcm" | "audio/pcmu"
    rate: int
    bytes_per_sample: int

    @property
    def bytes_per_ms(self) -> float:
        return self.rate * self.bytes_per_sample / 1000

    def ms(self, nbytes: int) -> float:
        """Duration of `nbytes` of encoded audio."""
        return nbytes / self.bytes_per_ms

    def nbytes(self, ms: float) -> int:
        """Encoded size of `ms` of audio, aligned to whole samples."""
        return int(ms * self.rate / 1000) * self.bytes_per_sample

    def decode(self, data: bytes) -> np.ndarray:
        if self.type == "audio/pcmu":
            return ulaw_decode(data)
        usable = len(data) - len(data) % 2
        return np.frombuffer(data[:usable], dtype="<i2")

    def encode(self, samples: np.ndarray) -> bytes:
        if self.type == "audio/pcmu":
            return ulaw_encode(samples)
        return np.asarray(samples, dtype="<i2").tobytes()

    def synth(self, duration_ms: int, seed: int) -> bytes:
        """Encoded synthetic speech, generated natively at this format's rate (no resampling)."""
        return self.encode(synth_speech(duration_ms, self.rate, seed=seed))

    def to_json(self) -> dict[str, Any]:
        return {"type": "audio/pcm", "rate": 24000} if self.type == "audio/pcm" else {"type": self.type}


PCM24K = AudioFormat("audio/pcm", 24000, 2)
PCMU = AudioFormat("audio/pcmu", 8000, 1)


def audio_format(spec: dict[str, Any] | None) -> AudioFormat | None:
    """Map a GA format object to an AudioFormat; None if the fake cannot handle it (audio/pcma)."""
    kind = (spec or {}).get("type") or "audio/pcm"
    if kind == "audio/pcm":
        return PCM24K
    if kind == "audio/pcmu":
        return PCMU
    return None


def rms_threshold(threshold: float) -> float:
    """Map the 0..1 `turn_detection.threshold` to a linear RMS level.

    0.5 lands at -35 dBFS: well under conversational speech (-16 dBFS peaks from `synth_speech`)
    and far above line noise or mu-law silence. 0 -> -55 dBFS, 1 -> -15 dBFS.
    """
    return 32768.0 * 10 ** ((-55.0 + 40.0 * threshold) / 20.0)


class EnergyVad:
    """A deliberately simple server-VAD stand-in working on 10 ms windows.

    Speech starts once 100 ms of the last 200 ms were above the threshold (so syllable dips do
    not matter), reported from the first loud window minus `prefix_padding_ms`. It stops after
    `silence_duration_ms` without a loud window, reported at the end of the last loud window.
    Times are milliseconds on the session's input-buffer timeline (all audio ever appended).
    """

    WINDOW_MS = 10
    START_SPAN = 20  # windows considered for the start decision (200 ms)
    START_NEEDED = 10  # loud windows needed within the span (100 ms)

    def __init__(
        self, rate: int, *, threshold: float, prefix_padding_ms: int, silence_duration_ms: int, base_ms: float
    ) -> None:
        self.window = rate * self.WINDOW_MS // 1000
        self.rate = rate
        self.level = rms_threshold(threshold)
        self._energy = self.level * self.level * self.window
        self.prefix_padding_ms = prefix_padding_ms
        self.silence_duration_ms = silence_duration_ms
        self.base_ms = base_ms
        self.speaking = False
        self._windows_done = 0
        self._residual = np.zeros(0, dtype=np.int16)
        self._recent: list[int] = []  # indices of loud windows within START_SPAN
        self._last_loud_end = 0.0

    def _t(self, window_index: int) -> float:
        return self.base_ms + window_index * self.WINDOW_MS

    def skip_residual(self) -> None:
        """Forget a partial window (after a buffer clear) while keeping the timeline aligned."""
        self.base_ms += len(self._residual) * 1000 / self.rate
        self._residual = np.zeros(0, dtype=np.int16)

    def reset(self) -> None:
        """Back to 'not speaking' (after a manual commit or clear)."""
        self.speaking = False
        self._recent = []

    def feed(self, samples: np.ndarray) -> list[tuple[str, int]]:
        """Consume samples; return ("start", audio_start_ms) / ("stop", audio_end_ms) events."""
        if len(self._residual):
            samples = np.concatenate([self._residual, samples])
        whole = len(samples) // self.window
        self._residual = samples[whole * self.window :]
        if whole == 0:
            return []
        frames = samples[: whole * self.window].reshape(whole, self.window).astype(np.float32)
        loud = np.einsum("ij,ij->i", frames, frames) >= self._energy  # sum of squares vs. RMS level
        return self.advance(loud.tolist())

    def feed_audio(self, fmt: AudioFormat, data: bytes) -> Sequence[tuple[str, int]]:
        """Consume appended audio as the client sent it, encoded in `fmt`; events as `feed`'s.

        A subclass may measure the encoded bytes directly (the load benchmark's lean fake does)."""
        return self.feed(fmt.decode(data))

    def advance(self, loud: Sequence[bool]) -> list[tuple[str, int]]:
        """Run the state machine over the next windows, given whether each one was loud."""
        # Fast paths: the common 20 ms append is all-quiet while idle or all-loud while speaking.
        end = self._windows_done + len(loud)
        if not self.speaking and not self._recent and not any(loud):
            self._windows_done = end
            return []
        if self.speaking and (
            all(loud) or (not any(loud) and self._t(end) - self._last_loud_end < self.silence_duration_ms)
        ):
            self._windows_done = end
            if loud[-1]:
                self._last_loud_end = self._t(end)
            return []
        events: list[tuple[str, int]] = []
        for flag in loud:
            idx = self._windows_done
            self._windows_done += 1
            if not self.speaking:
                self._recent = [i for i in self._recent if i > idx - self.START_SPAN]
                if flag:
                    self._recent.append(idx)
                if len(self._recent) >= self.START_NEEDED:
                    self.speaking = True
                    onset = self._t(self._recent[0])
                    self._last_loud_end = self._t(idx + 1)
                    self._recent = []
                    events.append(("start", int(max(0.0, onset - self.prefix_padding_ms))))
            elif flag:
                self._last_loud_end = self._t(idx + 1)
            elif self._t(idx + 1) - self._last_loud_end >= self.silence_duration_ms:
                self.speaking = False
                events.append(("stop", int(self._last_loud_end)))
        return events
