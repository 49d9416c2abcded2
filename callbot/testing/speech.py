"""Synthetic 'speech': a voiced buzz with a syllable envelope, loud enough for an energy VAD.

It is not intelligible speech and does not pretend to be. It has what the bridge cares about:
speech-band energy (a 110-230 Hz fundamental with harmonics up to ~3.4 kHz), dips between
syllables far shorter than a VAD's end-of-turn silence, and a deterministic waveform per seed so
recordings can be compared bit for bit.
"""

from __future__ import annotations

import numpy as np

CHARS_PER_SECOND = 14.0
"""Roughly how fast people speak, used to turn reply text into an audio duration."""


def duration_ms_for_text(text: str) -> int:
    """How long it takes to 'say' text at a conversational pace (at least 300 ms)."""
    return max(300, int(len(text) / CHARS_PER_SECOND * 1000))


def synth_speech(duration_ms: int, rate: int, *, seed: int = 0, level_dbfs: float = -16.0) -> np.ndarray:
    """Return `duration_ms` of int16 mono voiced audio at `rate` Hz.

    Syllables of 120-260 ms alternate with 20-60 ms dips, so a VAD with a few hundred ms of
    silence_duration hears one utterance.
    """
    rng = np.random.default_rng(seed)
    n = int(rate * duration_ms / 1000)
    if n <= 0:
        return np.zeros(0, dtype=np.int16)
    t = np.arange(n) / rate
    f0 = 110.0 + 120.0 * rng.random()
    vibrato = 1.0 + 0.03 * np.sin(2 * np.pi * 4.0 * t)
    phase = 2 * np.pi * np.cumsum(f0 * vibrato) / rate
    signal = np.zeros(n)
    for k in range(1, min(int(3400 / f0), 20) + 1):
        signal += np.sin(k * phase) / k
    envelope = np.full(n, 0.05)
    pos = 0
    while pos < n:
        syllable = int(rate * (0.12 + 0.14 * rng.random()))
        gap = int(rate * (0.02 + 0.04 * rng.random()))
        end = min(n, pos + syllable)
        envelope[pos:end] = np.maximum(0.05, np.hanning(syllable)[: end - pos] * (0.6 + 0.4 * rng.random()))
        pos = end + gap
    signal *= envelope
    peak = float(np.max(np.abs(signal))) or 1.0
    amplitude = 32767 * 10 ** (level_dbfs / 20) / peak
    return np.clip(signal * amplitude, -32768, 32767).astype(np.int16)


def silence(duration_ms: int, rate: int) -> np.ndarray:
    """`duration_ms` of digital silence at `rate` Hz."""
    return np.zeros(int(rate * duration_ms / 1000), dtype=np.int16)
