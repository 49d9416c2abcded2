"""Offline text-to-speech for the fakes and the demo: eSpeak NG, when it is installed.

eSpeak NG comes as a wheel (`espeakng-loader`, the optional `speech` extra: the shared library
and its voice data, no system package). It is called through ctypes, on its synchronous API:
`espeak_Initialize` with retrieval into a callback, `espeak_SetVoiceByName`, `espeak_Synth`,
`espeak_Synchronize`. The library has one global state, so every use holds one lock.

Where the wheel is missing (or its library does not load), `speak` returns None and callers keep
their synthetic tones (`callbot.testing.speech.synth_speech`).
"""

from __future__ import annotations

import ctypes
import logging
import threading
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

CALLER_VOICE = "en-us+f3"
"""The simulated caller: American English, a female variant."""
ASSISTANT_VOICE = "en-gb+m3"
"""The fake model: British English, a male variant (two voices tell the sides apart)."""
WORDS_PER_MINUTE = 165
PEAK_DBFS = -6.0

_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: retrieve samples through the callback
_ESPEAK_CHARS_UTF8 = 1
_ESPEAK_RATE = 1  # espeak_PARAMETER
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Engine:
    def __init__(self, lib: Any, rate: int) -> None:
        self.lib = lib
        self.rate = rate
        self.lock = threading.Lock()
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept referenced: the library holds the pointer
        lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: Any, count: int, _events: Any) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0  # go on

    def synth(self, text: str, voice: str) -> np.ndarray:
        with self.lock:
            self._chunks = []
            if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
                self.lib.espeak_SetVoiceByName(b"en")
            self.lib.espeak_SetParameter(_ESPEAK_RATE, WORDS_PER_MINUTE, 0)
            data = text.encode("utf-8")
            self.lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _ESPEAK_CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, dtype=np.int16)


@cache
def _engine() -> _Engine | None:
    try:
        import espeakng_loader
    except ImportError:
        return None
    try:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data = Path(espeakng_loader.get_data_path())
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data.parent).encode(), 0)
    except (OSError, RuntimeError, AttributeError) as exc:
        log.warning("eSpeak NG is installed but does not load (%s); the fakes keep their tones", exc)
        return None
    if rate <= 0:
        log.warning("eSpeak NG did not initialise (%s); the fakes keep their tones", rate)
        return None
    return _Engine(lib, rate)


def available() -> bool:
    """Whether words can be spoken here (the `speech` extra is installed and loads)."""
    return _engine() is not None


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling of a whole utterance (FFT: everything above the new Nyquist goes)."""
    if from_rate == to_rate or samples.size == 0:
        return samples.astype(np.int16)
    n_out = max(1, round(samples.size * to_rate / from_rate))
    spectrum = np.fft.rfft(samples.astype(np.float64))
    keep = n_out // 2 + 1
    resized = np.zeros(keep, dtype=complex)
    resized[: min(keep, spectrum.size)] = spectrum[: min(keep, spectrum.size)]
    out = np.fft.irfft(resized, n_out) * (n_out / samples.size)
    return np.clip(np.round(out), -32768, 32767).astype(np.int16)


def _trim(samples: np.ndarray, rate: int, floor: int = 200, pad_ms: int = 30) -> np.ndarray:
    """Without the silence eSpeak puts before and after an utterance (a little padding kept)."""
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > floor)
    if loud.size == 0:
        return samples[:0]
    pad = rate * pad_ms // 1000
    return samples[max(0, loud[0] - pad) : loud[-1] + pad]


@cache
def _spoken(text: str, voice: str) -> tuple[np.ndarray, int] | None:
    engine = _engine()
    if engine is None:
        return None
    raw = _trim(engine.synth(text, voice), engine.rate)
    raw.setflags(write=False)
    return raw, engine.rate


def speak(text: str, rate: int, *, voice: str = CALLER_VOICE) -> np.ndarray | None:
    """`text` spoken as int16 mono at `rate` Hz, peaking at PEAK_DBFS; None without eSpeak NG."""
    spoken = _spoken(text, voice)
    if spoken is None:
        return None
    raw, native = spoken
    audio = resample(raw, native, rate).astype(np.float64)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak > 0:
        audio *= 32767 * 10 ** (PEAK_DBFS / 20) / peak
    return np.clip(np.round(audio), -32768, 32767).astype(np.int16)
