"""Measures that tell speech from a tone or a buzz, for the tests of the speaking demo."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FRAME = 256  # 32 ms at 8 kHz
VOICED_DBFS = -40.0


@dataclass(frozen=True)
class Spectra:
    frames: int  # frames loud enough to measure
    centroid_std_hz: float  # how much the spectral centre of mass moves from frame to frame
    flatness_std: float  # how much the spectrum changes between tonal (vowels) and noisy (fricatives)
    distinct_peaks: int  # distinct strongest frequencies over the frames (a tone has one)
    f1_share: float  # energy share in 250-900 Hz (first formants)
    f2_share: float  # energy share in 900-2500 Hz (second formants)

    def speech_like(self) -> bool:
        return (
            self.frames >= 20
            and self.centroid_std_hz > 200
            and self.flatness_std > 0.02
            and self.distinct_peaks > 20
            and self.f1_share > 0.2
            and self.f2_share > 0.1
        )


def spectra(samples: np.ndarray, rate: int = 8000) -> Spectra:
    x = samples.astype(np.float64)
    window = np.hanning(FRAME)
    freqs = np.fft.rfftfreq(FRAME, 1 / rate)
    floor = 32768 * 10 ** (VOICED_DBFS / 20)
    centroids, flatness, peaks = [], [], []
    f1 = f2 = total = 0.0
    for start in range(0, len(x) - FRAME, FRAME // 2):
        frame = x[start : start + FRAME]
        if np.sqrt(np.mean(frame**2)) < floor:
            continue
        power = np.abs(np.fft.rfft(frame * window)) ** 2 + 1e-9
        centroids.append(float((freqs * power).sum() / power.sum()))
        flatness.append(float(np.exp(np.log(power).mean()) / power.mean()))
        peaks.append(round(float(freqs[power.argmax()])))
        f1 += float(power[(freqs >= 250) & (freqs < 900)].sum())
        f2 += float(power[(freqs >= 900) & (freqs < 2500)].sum())
        total += float(power.sum())
    return Spectra(
        frames=len(centroids),
        centroid_std_hz=float(np.std(centroids)) if centroids else 0.0,
        flatness_std=float(np.std(flatness)) if flatness else 0.0,
        distinct_peaks=len(set(peaks)),
        f1_share=f1 / total if total else 0.0,
        f2_share=f2 / total if total else 0.0,
    )
