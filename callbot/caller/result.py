"""What a simulated call produced: the TwiML, both audio tracks on one timeline, and protocol facts.

Tests assert on it, the demo writes its stereo WAV, the benchmark aggregates its playback stats.
All times are milliseconds on the call timeline (20 ms per tick; wall-clock elapsed x `speed`),
counted from the moment the Media Streams socket opened.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from callbot.caller.codec import FRAME_MS, SAMPLE_RATE
from callbot.caller.wavio import write_wav

Outcome = Literal["completed", "webhook_error", "no_stream", "ws_rejected", "error"]
MarkStatus = Literal["played", "cleared"]


def speech_intervals(
    pcm: np.ndarray, threshold: float = 300.0, *, min_gap_ms: int = 100, rate: int = SAMPLE_RATE
) -> list[tuple[int, int]]:
    """[(start_ms, end_ms)] of 20 ms frames whose RMS exceeds `threshold` (int16 units).

    Frames closer than `min_gap_ms` are merged so syllable dips do not split an utterance.
    """
    frame = rate * FRAME_MS // 1000
    count = len(pcm) // frame
    if count == 0:
        return []
    frames = np.asarray(pcm[: count * frame], dtype=np.float64).reshape(count, frame)
    loud = np.sqrt(np.mean(frames**2, axis=1)) > threshold
    intervals: list[tuple[int, int]] = []
    for index in np.flatnonzero(loud):
        start, end = int(index) * FRAME_MS, (int(index) + 1) * FRAME_MS
        if intervals and start - intervals[-1][1] < min_gap_ms:
            intervals[-1] = (intervals[-1][0], end)
        else:
            intervals.append((start, end))
    return intervals


@dataclass
class CallResult:
    """Everything observed on one simulated call.

    `outcome` says how far the call got: "webhook_error" (non-2xx from /twilio/voice, see
    `http_status`), "no_stream" (TwiML without <Connect><Stream>, e.g. a busy <Say>/<Hangup/>),
    "ws_rejected" (the upgrade was refused with `upgrade_status`), "error" (anything else, see
    `error`) or "completed".
    `marks_echoed` holds (name, ms, "played" | "cleared"); `marks_received` holds (name, ms).
    `late_frames` counts dropouts inside assistant bursts, `frame_lateness_ms` the per-frame slip.
    `duration_s` is the stream's length on the call timeline, `wall_s` the real time `run()` took.
    `messages_after_stop` counts server messages that arrived after our `stop` (in flight ones
    are normal; ones arriving well after it are also listed in `violations`).
    """

    twiml: str = ""
    outcome: Outcome = "completed"
    http_status: int | None = None
    upgrade_status: int | None = None
    error: str | None = None
    stream_url: str | None = None
    custom_parameters: dict[str, str] = field(default_factory=dict)
    stream_sid: str = ""
    call_sid: str = ""
    account_sid: str = ""
    caller_audio: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    assistant_audio: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    media_arrivals_ms: list[float] = field(default_factory=list)
    clears: list[float] = field(default_factory=list)
    marks_received: list[tuple[str, float]] = field(default_factory=list)
    marks_echoed: list[tuple[str, float, MarkStatus]] = field(default_factory=list)
    dtmf_sent: list[tuple[str, float]] = field(default_factory=list)
    frames_sent: int = 0
    frames_received: int = 0
    """20 ms frames of assistant audio received (a media message may carry several)."""
    media_messages_received: int = 0
    bytes_received: int = 0
    frames_played: int = 0
    late_frames: int = 0
    frame_lateness_ms: list[int] = field(default_factory=list)
    late_at_ms: list[int] = field(default_factory=list)
    """For each late frame, how far into its burst of assistant audio it came (ms)."""
    bursts: list[tuple[int, int]] = field(default_factory=list)
    max_buffered_ms: float = 0.0
    script_timeouts: int = 0
    messages_after_stop: int = 0
    violations: list[str] = field(default_factory=list)
    closed_by: Literal["caller", "server", "twilio"] | None = None
    twilio_ended: str | None = None
    """Why Twilio ended the stream itself ("completed", "redirected"), if it did."""
    close_code: int | None = None
    duration_s: float = 0.0
    wall_s: float = 0.0

    @property
    def connected(self) -> bool:
        """True when the Media Streams socket was opened (the call reached the bot)."""
        return self.stream_sid != ""

    def stereo(self) -> np.ndarray:
        """(n, 2) int16 array: caller left, assistant right, zero-padded to equal length."""
        length = max(len(self.caller_audio), len(self.assistant_audio))
        out = np.zeros((length, 2), dtype=np.int16)
        out[: len(self.caller_audio), 0] = self.caller_audio
        out[: len(self.assistant_audio), 1] = self.assistant_audio
        return out

    def write_wav(self, path: str | Path) -> Path:
        """Write the call as an 8 kHz stereo WAV (caller left, assistant as played right)."""
        write_wav(path, [self.caller_audio, self.assistant_audio], SAMPLE_RATE)
        return Path(path)

    def assistant_speech_intervals(self, threshold: float = 300.0) -> list[tuple[int, int]]:
        """[(start_ms, end_ms)] where the played assistant audio has energy (RMS above `threshold`)."""
        return speech_intervals(self.assistant_audio, threshold)

    def caller_speech_intervals(self, threshold: float = 300.0) -> list[tuple[int, int]]:
        """[(start_ms, end_ms)] where the caller's sent audio has energy (RMS above `threshold`)."""
        return speech_intervals(self.caller_audio, threshold)

    def summary(self) -> str:
        """One line for logs and the demo: outcome, duration, playback health and violations."""
        return (
            f"{self.outcome} call={self.call_sid} {self.duration_s:.1f}s sent={self.frames_sent} "
            f"recv={self.frames_received} played={self.frames_played} late={self.late_frames} "
            f"clears={len(self.clears)} marks={len(self.marks_echoed)} "
            f"closed_by={self.closed_by} code={self.close_code} violations={len(self.violations)}"
        )
