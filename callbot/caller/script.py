"""What the simulated caller does, step by step, and the cursor that plays a script on the 20 ms clock.

A script is a plain list of immutable steps so tests can build, print and reuse them. All timing
is expressed on the call timeline (ticks of 20 ms), never in wall-clock seconds, so a script means
the same thing at `speed=1` (softphone, demo) and `speed=8` (tests, benchmark).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from callbot.caller.audio import AudioSource
from callbot.caller.codec import FRAME_MS

SAMPLES_PER_FRAME = 160


@dataclass(frozen=True, eq=False)
class Say:
    """Stream this 8 kHz int16 mono audio; the last partial frame is padded with silence."""

    pcm8k: np.ndarray
    label: str = ""


@dataclass(frozen=True)
class Silence:
    """Stream silence frames for `ms` (rounded up to whole 20 ms frames)."""

    ms: int


@dataclass(frozen=True)
class WaitForAssistant:
    """Stream silence until the assistant has played audio and then been quiet for `quiet_ms`.

    "Quiet" means nothing played and nothing queued, i.e. the reply has finished playing on the
    phone, not merely finished arriving. The wait counts only audio that plays after the step
    begins (or is still playing when it begins). After `timeout_s` of call time the step gives up,
    records a timeout and the script continues.
    """

    timeout_s: float = 30.0
    quiet_ms: int = 500


@dataclass(frozen=True, eq=False)
class SayDuringAssistant:
    """Start talking `after_ms` after the assistant's audio starts playing (barge-in).

    If the assistant is already playing when the step begins, that playback counts as the start.
    If no assistant audio plays within `timeout_s`, a timeout is recorded and the audio is said anyway.
    """

    pcm8k: np.ndarray
    after_ms: int = 500
    timeout_s: float = 30.0
    label: str = ""


@dataclass(frozen=True)
class Dtmf:
    """Press a key: Twilio sends a `dtmf` message. Takes no time; add a Silence for a gap."""

    digit: str

    def __post_init__(self) -> None:
        if len(self.digit) != 1 or self.digit not in "0123456789*#ABCD":
            raise ValueError(f"not a DTMF digit: {self.digit!r}")


@dataclass(frozen=True, eq=False)
class Live:
    """Stream whatever `source` delivers (a microphone), one frame per tick, until it returns None.

    The source is asked once per tick, on the call's clock; see `callbot.caller.audio`.
    """

    source: AudioSource
    label: str = ""


@dataclass(frozen=True)
class HangUp:
    """Hang up: Twilio sends `stop` and closes the socket."""


Step = Say | Silence | WaitForAssistant | SayDuringAssistant | Dtmf | Live | HangUp


@dataclass
class CallerScript:
    """An ordered plan of caller steps; `then()` chains for readable test setup."""

    steps: list[Step] = field(default_factory=list)

    @classmethod
    def of(cls, *steps: Step) -> CallerScript:
        """Build a script from steps given inline."""
        return cls(list(steps))

    def then(self, step: Step) -> CallerScript:
        """Append a step and return self so plans read top to bottom."""
        self.steps.append(step)
        return self

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)


@dataclass
class TickPlan:
    """What the caller sends on one tick: at most one audio frame, any DTMF digits, maybe hang up.

    `frame` is None when the script is over (then `hangup` or `ended` says why). `notes` carries
    script-level happenings (step starts, timeouts) for the observer and the result.
    """

    frame: np.ndarray | None = None
    dtmf: list[str] = field(default_factory=list)
    hangup: bool = False
    ended: bool = False
    notes: list[tuple[str, dict[str, object]]] = field(default_factory=list)


class ScriptCursor:
    """Walks a script one 20 ms tick at a time, reacting to what the assistant is playing.

    The caller asks `advance(tick, assistant_playing, queue_empty)` once per tick after playback
    for that tick has been decided, so waits see the same clock the phone would.
    """

    def __init__(self, script: CallerScript | Iterable[Step]) -> None:
        self._steps: list[Step] = list(script)
        self._index = 0
        self._begun = False
        self._step_tick = 0
        self._pos = 0
        self._heard = False
        self._quiet_ms = 0
        self._speech_start: int | None = None
        self._speaking = False
        self.timeouts = 0

    @property
    def done(self) -> bool:
        """True once every step has been consumed."""
        return self._index >= len(self._steps)

    def _next_step(self) -> None:
        self._index += 1
        self._begun = False

    def _begin(self, step: Step, tick: int, plan: TickPlan) -> None:
        self._begun = True
        self._step_tick = tick
        self._pos = 0
        self._heard = False
        self._quiet_ms = 0
        self._speech_start = None
        self._speaking = False
        note: dict[str, object] = {"index": self._index, "step": type(step).__name__, "tick": tick}
        label = getattr(step, "label", "")
        if label:
            note["label"] = label
        plan.notes.append(("step", note))

    def _take_audio(self, pcm: np.ndarray) -> np.ndarray | None:
        """Next 160 samples of `pcm`, zero-padded; None when it is exhausted."""
        if self._pos >= len(pcm):
            return None
        chunk = np.asarray(pcm[self._pos : self._pos + SAMPLES_PER_FRAME], dtype=np.int16)
        self._pos += SAMPLES_PER_FRAME
        if len(chunk) < SAMPLES_PER_FRAME:
            chunk = np.concatenate([chunk, np.zeros(SAMPLES_PER_FRAME - len(chunk), dtype=np.int16)])
        return chunk

    def advance(self, tick: int, assistant_playing: bool, queue_empty: bool) -> TickPlan:
        """Decide this tick's frame. Zero-duration steps (Dtmf, finished waits) fall through."""
        plan = TickPlan()
        silence = np.zeros(SAMPLES_PER_FRAME, dtype=np.int16)
        while self._index < len(self._steps):
            step = self._steps[self._index]
            if not self._begun:
                self._begin(step, tick, plan)
            elapsed_ms = (tick - self._step_tick) * FRAME_MS
            if isinstance(step, Say):
                frame = self._take_audio(step.pcm8k)
                if frame is not None:
                    plan.frame = frame
                    return plan
            elif isinstance(step, Silence):
                if elapsed_ms < step.ms:
                    plan.frame = silence
                    return plan
            elif isinstance(step, Dtmf):
                plan.dtmf.append(step.digit)
            elif isinstance(step, Live):
                live = step.source.read_frame()
                if live is not None:
                    plan.frame = _as_frame(live)
                    return plan
            elif isinstance(step, HangUp):
                plan.hangup = True
                self._next_step()
                return plan
            elif isinstance(step, WaitForAssistant):
                if assistant_playing or not queue_empty:
                    self._heard = True
                    self._quiet_ms = 0
                elif self._heard:
                    self._quiet_ms += FRAME_MS
                if self._heard and self._quiet_ms >= step.quiet_ms:
                    plan.notes.append(("wait_done", {"tick": tick, "waited_ms": elapsed_ms}))
                elif elapsed_ms >= step.timeout_s * 1000:
                    self.timeouts += 1
                    plan.notes.append(("wait_timeout", {"tick": tick, "step": "WaitForAssistant"}))
                else:
                    plan.frame = silence
                    return plan
            elif isinstance(step, SayDuringAssistant):
                if not self._speaking:
                    if self._speech_start is None and assistant_playing:
                        self._speech_start = tick
                    if self._speech_start is not None:
                        self._speaking = (tick - self._speech_start) * FRAME_MS >= step.after_ms
                    elif elapsed_ms >= step.timeout_s * 1000:
                        self.timeouts += 1
                        self._speaking = True
                        plan.notes.append(("wait_timeout", {"tick": tick, "step": "SayDuringAssistant"}))
                    if self._speaking:
                        plan.notes.append(("barge_in", {"tick": tick, "label": step.label}))
                if not self._speaking:
                    plan.frame = silence
                    return plan
                frame = self._take_audio(step.pcm8k)
                if frame is not None:
                    plan.frame = frame
                    return plan
            self._next_step()
        plan.ended = True
        return plan


def _as_frame(pcm: np.ndarray) -> np.ndarray:
    """Exactly one frame of int16 from a live source: cut or zero-padded to 160 samples."""
    frame = np.asarray(pcm, dtype=np.int16)[:SAMPLES_PER_FRAME]
    if len(frame) < SAMPLES_PER_FRAME:
        frame = np.concatenate([frame, np.zeros(SAMPLES_PER_FRAME - len(frame), dtype=np.int16)])
    return frame
