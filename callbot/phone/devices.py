"""Microphone and speaker for `callbot phone` live mode, through sounddevice (PortAudio).

sounddevice is optional (`pip install "callbot[phone]"`) and imported only here, only when live
mode starts. Every way audio can be missing (the package, the PortAudio library, a device) ends
up as one `AudioDeviceError` with a sentence a person can act on.

The simulated caller's 20 ms clock runs on the event loop; the sound card runs on its own clock
in PortAudio's thread. `MicSource` and `SpeakerSink` sit between the two: small FIFOs with a
jitter margin that pad with silence when a side runs dry and drop the oldest audio when one runs
ahead, so clock drift costs a click now and then, never a growing delay. The devices run at
their own default rate; `StreamResampler` converts to and from the 8 kHz of a phone line.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, TextIO

import numpy as np

from callbot.errors import LocalError

PHONE_RATE = 8000
FRAME_SAMPLES = 160  # 20 ms at 8 kHz
FALLBACK_RATE = 48000

INSTALL_HINT = 'live mode needs sounddevice: pip install "callbot[phone]"'
PORTAUDIO_HINT = (
    "the PortAudio library is missing ({error}); install it (Debian/Ubuntu: apt-get install "
    "libportaudio2, Fedora: dnf install portaudio, macOS: brew install portaudio)"
)


class AudioDeviceError(LocalError):
    """Live audio cannot work here; the message says why in one line (exit code 2)."""


def load_sounddevice(import_module: Callable[[str], ModuleType] = importlib.import_module) -> Any:
    """Import sounddevice, turning a missing package or a missing PortAudio into AudioDeviceError."""
    try:
        return import_module("sounddevice")
    except ImportError as exc:
        raise AudioDeviceError(INSTALL_HINT) from exc
    except OSError as exc:  # sounddevice raises OSError when libportaudio cannot be loaded
        raise AudioDeviceError(PORTAUDIO_HINT.format(error=exc)) from exc


def _device_errors(sd: Any) -> tuple[type[BaseException], ...]:
    """What sounddevice raises for device trouble: PortAudioError, and ValueError for bad names."""
    portaudio_error = getattr(sd, "PortAudioError", None)
    errors: tuple[type[BaseException], ...] = (ValueError, OSError)
    if isinstance(portaudio_error, type) and issubclass(portaudio_error, BaseException):
        errors = (portaudio_error, *errors)
    return errors


def parse_device(text: str | None) -> int | str | None:
    """A `--input-device/--output-device` value: a device index, a name (substring) or None."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    return int(text) if text.isdigit() else text


def list_devices(sd: Any, out: TextIO) -> None:
    """Print PortAudio's device table (the default input and output are marked > and <)."""
    try:
        devices = sd.query_devices()
    except _device_errors(sd) as exc:
        raise AudioDeviceError(f"cannot list audio devices: {exc}") from exc
    if len(devices) == 0:
        raise AudioDeviceError("PortAudio found no audio devices on this machine")
    print(devices, file=out)


def _describe(sd: Any, device: int | str | None, kind: str) -> dict[str, Any]:
    """The chosen (or default) device of `kind`, as sounddevice describes it."""
    which = "default " + kind if device is None else f"{kind} device {device!r}"
    try:
        info = sd.query_devices(device, kind=kind)
    except _device_errors(sd) as exc:
        hint = "" if device is not None else f" (no default {kind} device; see --list-devices)"
        raise AudioDeviceError(f"no usable {which}: {exc}{hint}") from exc
    channels = int(info.get(f"max_{kind}_channels", 0))
    if channels < 1:
        raise AudioDeviceError(f"{which} ({info.get('name', '?')}) has no {kind} channels")
    return dict(info)


def _device_rate(info: dict[str, Any]) -> int:
    rate = info.get("default_samplerate") or 0
    return int(rate) if rate and rate > 0 else FALLBACK_RATE


def _kaiser(x: np.ndarray, beta: float) -> np.ndarray:
    inside = np.abs(x) <= 1.0
    arg = np.sqrt(np.clip(1.0 - x * x, 0.0, 1.0))
    return np.where(inside, np.i0(beta * arg) / np.i0(beta), 0.0)


class StreamResampler:
    """Windowed-sinc resampling for any rate ratio, one chunk at a time.

    The same filter as `callbot.caller.wavio.resample_to` (Kaiser window, 16 zero crossings, cutoff
    0.92 x the lower Nyquist), computed incrementally: output sample m sits at input position
    m x rate_in / rate_out and is produced once the input reaches half a filter past it, so the
    concatenated output equals resampling the whole signal at once. Delay: 16 zero crossings,
    about 2 ms.
    """

    def __init__(self, rate_in: int, rate_out: int, *, zero_crossings: int = 16, rolloff: float = 0.92):
        if rate_in <= 0 or rate_out <= 0:
            raise ValueError("sample rates must be positive")
        g = math.gcd(rate_in, rate_out)
        self.up, self.down = rate_out // g, rate_in // g
        self.passthrough = self.up == self.down
        cutoff = rolloff * min(1.0, rate_out / rate_in)
        self.half = math.ceil(zero_crossings / cutoff)
        self._offsets = np.arange(-self.half + 1, self.half + 1)
        self._phases = min(self.up, 8192)
        frac = np.arange(self._phases) / self._phases
        dist = frac[:, None] - self._offsets[None, :]
        self._bank = cutoff * np.sinc(cutoff * dist) * _kaiser(dist / self.half, 8.6)
        # Input history in "padded" coordinates: index p holds input sample p - half.
        self._buf = np.zeros(self.half, dtype=np.float64)
        self._buf_start = 0
        self._next_out = 0

    def process(self, pcm: np.ndarray) -> np.ndarray:
        """Feed int16 samples; return the int16 output samples that are now complete."""
        x = np.asarray(pcm)
        if self.passthrough:
            return x.astype(np.int16, copy=True)
        self._buf = np.concatenate([self._buf, x.astype(np.float64)])
        buf_end = self._buf_start + len(self._buf)
        # Output m needs padded inputs up to base(m) + 2*half, where base(m) = m*down // up.
        last_base = buf_end - 1 - 2 * self.half
        if last_base < 0:
            return np.zeros(0, dtype=np.int16)
        # Every m with m*down // up <= last_base, i.e. m*down < (last_base + 1)*up.
        end = ((last_base + 1) * self.up + self.down - 1) // self.down
        count = end - self._next_out
        if count <= 0:
            return np.zeros(0, dtype=np.int16)
        m = np.arange(self._next_out, end, dtype=np.int64)
        base = (m * self.down) // self.up
        phase = ((m * self.down) % self.up) * self._phases // self.up
        taps = base[:, None] + self._offsets[None, :] + self.half - self._buf_start
        out = np.einsum("ij,ij->i", self._buf[taps], self._bank[phase])
        self._next_out = end
        keep_from = (end * self.down) // self.up + 1  # first padded index output `end` needs
        drop = max(0, keep_from - self._buf_start)
        self._buf = self._buf[drop:]
        self._buf_start += drop
        return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def _mono(block: Any) -> np.ndarray:
    data = np.asarray(block)
    if data.ndim == 2:
        data = data[:, 0]
    return np.array(data, dtype=np.int16, copy=True)


class MicSource:
    """The microphone as the caller's `AudioSource`: PortAudio pushes, the 20 ms clock pulls.

    `callback` runs in PortAudio's thread and only appends. `read_frame` (event loop) converts to
    8 kHz and hands out 160 samples; it waits for `prime_ms` of audio before it starts and after
    any underrun (handing out silence meanwhile), and drops the oldest audio above `max_ms`.
    `stop()` makes the next `read_frame` return None: the `Live` step ends and the caller hangs up.
    """

    def __init__(self, device_rate: int, *, prime_ms: int = 40, max_ms: int = 200) -> None:
        self.device_rate = device_rate
        self._resampler = StreamResampler(device_rate, PHONE_RATE)
        self._lock = threading.Lock()
        self._pending: list[np.ndarray] = []
        self._fifo = np.zeros(0, dtype=np.int16)
        self._prime = PHONE_RATE * prime_ms // 1000
        self._max = PHONE_RATE * max_ms // 1000
        self._primed = False
        self._stopped = False
        self.underruns = 0
        self.dropped_ms = 0.0
        self.device_errors = 0

    def callback(self, indata: Any, frames: int, time: Any, status: Any) -> None:
        """sounddevice InputStream callback (PortAudio thread)."""
        block = _mono(indata)
        with self._lock:
            self._pending.append(block)
            if status:
                self.device_errors += 1

    def stop(self) -> None:
        self._stopped = True

    @property
    def stopped(self) -> bool:
        return self._stopped

    def read_frame(self) -> np.ndarray | None:
        if self._stopped:
            return None
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            fresh = self._resampler.process(np.concatenate(pending))
            self._fifo = np.concatenate([self._fifo, fresh])
        if len(self._fifo) > self._max:
            excess = len(self._fifo) - self._prime
            self._fifo = self._fifo[excess:]
            self.dropped_ms += excess * 1000 / PHONE_RATE
        if not self._primed:
            if len(self._fifo) < self._prime:
                return np.zeros(FRAME_SAMPLES, dtype=np.int16)
            self._primed = True
        if len(self._fifo) < FRAME_SAMPLES:
            self.underruns += 1
            self._primed = False
            return np.zeros(FRAME_SAMPLES, dtype=np.int16)
        frame, self._fifo = self._fifo[:FRAME_SAMPLES], self._fifo[FRAME_SAMPLES:]
        return frame


class SpeakerSink:
    """The speaker as the caller's `AudioSink`: the 20 ms clock pushes, PortAudio pulls.

    `play_frame` (event loop) converts each tick's playback to the device rate; `callback`
    (PortAudio thread) copies it out. Playback starts once `prime_ms` is buffered (again after an
    underrun); above `max_ms` the oldest audio is dropped so the delay cannot grow.
    """

    def __init__(self, device_rate: int, *, prime_ms: int = 60, max_ms: int = 250) -> None:
        self.device_rate = device_rate
        self._resampler = StreamResampler(PHONE_RATE, device_rate)
        self._lock = threading.Lock()
        self._fifo = np.zeros(0, dtype=np.int16)
        self._prime = device_rate * prime_ms // 1000
        self._max = device_rate * max_ms // 1000
        self._primed = False
        self.underruns = 0
        self.dropped_ms = 0.0
        self.device_errors = 0

    def play_frame(self, pcm8k: np.ndarray) -> None:
        converted = self._resampler.process(pcm8k)
        with self._lock:
            self._fifo = np.concatenate([self._fifo, converted])
            if len(self._fifo) > self._max:
                excess = len(self._fifo) - self._prime
                self._fifo = self._fifo[excess:]
                self.dropped_ms += excess * 1000 / self.device_rate

    def callback(self, outdata: Any, frames: int, time: Any, status: Any) -> None:
        """sounddevice OutputStream callback (PortAudio thread)."""
        block = np.zeros(frames, dtype=np.int16)
        with self._lock:
            if status:
                self.device_errors += 1
            if not self._primed and len(self._fifo) >= self._prime:
                self._primed = True
            if self._primed:
                take = min(frames, len(self._fifo))
                block[:take] = self._fifo[:take]
                self._fifo = self._fifo[take:]
                if take < frames:
                    self.underruns += 1
                    self._primed = False
        outdata[:] = block.reshape(-1, 1) if np.ndim(outdata) == 2 else block


class LiveAudio:
    """The opened microphone and speaker streams of one call (use as a context manager)."""

    def __init__(self, sd: Any, input_device: int | str | None, output_device: int | str | None) -> None:
        self._sd = sd
        self._errors = _device_errors(sd)
        in_info = _describe(sd, input_device, "input")
        out_info = _describe(sd, output_device, "output")
        self.mic = MicSource(_device_rate(in_info))
        self.speaker = SpeakerSink(_device_rate(out_info))
        self.input_name = str(in_info.get("name", input_device))
        self.output_name = str(out_info.get("name", output_device))
        self._streams: list[Any] = []
        try:
            self._streams.append(
                sd.InputStream(
                    device=input_device,
                    channels=1,
                    samplerate=self.mic.device_rate,
                    dtype="int16",
                    latency="low",
                    callback=self.mic.callback,
                )
            )
            self._streams.append(
                sd.OutputStream(
                    device=output_device,
                    channels=1,
                    samplerate=self.speaker.device_rate,
                    dtype="int16",
                    latency="low",
                    callback=self.speaker.callback,
                )
            )
        except self._errors as exc:
            self.close()
            raise AudioDeviceError(f"cannot open the audio devices: {exc}") from exc

    def describe(self) -> str:
        return (
            f"microphone: {self.input_name} ({self.mic.device_rate} Hz); "
            f"speaker: {self.output_name} ({self.speaker.device_rate} Hz)"
        )

    def health(self) -> str:
        """How well the sound card kept up with the call's clock, for the end-of-call report."""
        mic, speaker = self.mic, self.speaker
        return (
            f"audio: microphone {mic.underruns} underruns, {mic.dropped_ms:.0f} ms dropped, "
            f"{mic.device_errors} device warnings; speaker {speaker.underruns} underruns, "
            f"{speaker.dropped_ms:.0f} ms dropped, {speaker.device_errors} device warnings"
        )

    def start(self) -> None:
        try:
            for stream in self._streams:
                stream.start()
        except self._errors as exc:
            self.close()
            raise AudioDeviceError(f"cannot start the audio devices: {exc}") from exc

    def close(self) -> None:
        streams, self._streams = self._streams, []
        for stream in streams:
            with contextlib.suppress(*self._errors):
                stream.stop()
            with contextlib.suppress(*self._errors):
                stream.close()

    def __enter__(self) -> LiveAudio:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
