"""WAV in and out for the simulator: read any common WAV as mono int16, resample offline, write stereo.

This is the file-mode input path (a recorded caller utterance fed to the simulated call) and the
recording output path (caller left, assistant right). Quality matters more than speed here, so
resampling is a windowed-sinc interpolator rather than the cheap live-path converters.
"""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path

import numpy as np

_FMT_PCM = 1
_FMT_FLOAT = 3
_FMT_EXTENSIBLE = 0xFFFE


def _to_int16_mono(raw: bytes, sample_width: int, channels: int, is_float: bool) -> np.ndarray:
    """Convert interleaved frames of any supported width to mono int16 by averaging channels."""
    if is_float:
        dtype = "<f4" if sample_width == 4 else "<f8"
        data = np.frombuffer(raw, dtype=dtype).astype(np.float64) * 32767.0
    elif sample_width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float64) - 128.0) * 256.0
    elif sample_width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float64)
    elif sample_width == 3:
        b = np.frombuffer(raw, dtype=np.uint8)[: len(raw) // 3 * 3].reshape(-1, 3).astype(np.int32)
        value = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        value = np.where(value >= 1 << 23, value - (1 << 24), value)
        data = value.astype(np.float64) / 256.0
    elif sample_width == 4:
        data = np.frombuffer(raw, dtype="<i4").astype(np.float64) / 65536.0
    else:
        raise ValueError(f"unsupported sample width: {sample_width} bytes")
    usable = len(data) // channels * channels
    frames = data[:usable].reshape(-1, channels).mean(axis=1)
    return np.clip(np.round(frames), -32768, 32767).astype(np.int16)


def _read_riff(path: Path) -> tuple[bytes, int, int, int, bool]:
    """Minimal RIFF parser for what `wave` refuses (float and WAVE_FORMAT_EXTENSIBLE on 3.11)."""
    blob = path.read_bytes()
    if blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        raise ValueError(f"{path}: not a RIFF/WAVE file")
    pos = 12
    fmt: tuple[int, int, int, int] | None = None
    while pos + 8 <= len(blob):
        chunk_id = blob[pos : pos + 4]
        size = struct.unpack("<I", blob[pos + 4 : pos + 8])[0]
        body = blob[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt ":
            tag, channels, rate = struct.unpack("<HHI", body[:8])
            bits = struct.unpack("<H", body[14:16])[0]
            if tag == _FMT_EXTENSIBLE and len(body) >= 26:
                tag = struct.unpack("<H", body[24:26])[0]
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise ValueError(f"{path}: data chunk before fmt chunk")
            tag, channels, rate, bits = fmt
            if tag not in (_FMT_PCM, _FMT_FLOAT):
                raise ValueError(f"{path}: unsupported WAV format tag {tag}")
            return body, bits // 8, channels, rate, tag == _FMT_FLOAT
        pos += 8 + size + (size & 1)
    raise ValueError(f"{path}: no data chunk")


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read PCM8/16/24/32 or float32/64 WAV; return (mono int16 samples, sample rate).

    The stdlib `wave` module handles integer PCM; float and extensible files go through a small
    RIFF parser because `wave` on Python 3.11 rejects them.
    """
    path = Path(path)
    try:
        with wave.open(str(path), "rb") as w:
            raw = w.readframes(w.getnframes())
            return _to_int16_mono(raw, w.getsampwidth(), w.getnchannels(), False), w.getframerate()
    except wave.Error:
        raw, width, channels, rate, is_float = _read_riff(path)
        return _to_int16_mono(raw, width, channels, is_float), rate


def _kaiser(x: np.ndarray, beta: float) -> np.ndarray:
    """Kaiser window evaluated at x in [-1, 1] (zero outside)."""
    inside = np.abs(x) <= 1.0
    arg = np.sqrt(np.clip(1.0 - x * x, 0.0, 1.0))
    return np.where(inside, np.i0(beta * arg) / np.i0(beta), 0.0)


def resample_to(
    pcm: np.ndarray, rate_in: int, rate_out: int, *, zero_crossings: int = 16, rolloff: float = 0.92
) -> np.ndarray:
    """Band-limited (Kaiser-windowed sinc) resampling for any rate ratio.

    Each output sample is a windowed-sinc interpolation of the input at its exact fractional
    position; when downsampling the sinc is stretched so it also acts as the anti-alias filter
    (cutoff `rolloff` x the lower Nyquist). Output length is floor(n * rate_out / rate_in).
    Integer input returns int16, float input returns float32.
    """
    x = np.asarray(pcm)
    is_int = np.issubdtype(x.dtype, np.integer)
    if rate_in <= 0 or rate_out <= 0:
        raise ValueError("sample rates must be positive")
    if rate_in == rate_out or len(x) == 0:
        return x.astype(np.int16 if is_int else np.float32, copy=True)
    src = x.astype(np.float64)
    n_out = len(src) * rate_out // rate_in
    cutoff = rolloff * min(1.0, rate_out / rate_in)
    half = math.ceil(zero_crossings / cutoff)
    padded = np.concatenate([np.zeros(half), src, np.zeros(half + 1)])
    offsets = np.arange(-half + 1, half + 1)
    # Output m sits at input position m * down / up exactly; its fractional part takes only `up`
    # distinct values, so the filter taps are tabulated once per phase (a polyphase filter bank).
    g = math.gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    phases = min(up, 8192)
    frac_table = np.arange(phases) / phases
    dist_table = frac_table[:, None] - offsets[None, :]
    bank = cutoff * np.sinc(cutoff * dist_table) * _kaiser(dist_table / half, 8.6)
    out = np.empty(n_out, dtype=np.float64)
    block = max(256, 2_000_000 // (2 * half))
    for first in range(0, n_out, block):
        m = np.arange(first, min(n_out, first + block), dtype=np.int64)
        base = (m * down) // up
        phase = ((m * down) % up) * phases // up
        taps = base[:, None] + offsets[None, :] + half
        out[first : first + len(m)] = np.einsum("ij,ij->i", padded[taps], bank[phase])
    if is_int:
        return np.clip(np.round(out), -32768, 32767).astype(np.int16)
    return out.astype(np.float32)


def write_wav(path: str | Path, channels: list[np.ndarray], rate: int) -> None:
    """Write int16 WAV with one channel per array (stereo for two); shorter channels are zero-padded."""
    if not channels:
        raise ValueError("need at least one channel")
    length = max(len(c) for c in channels)
    frames = np.zeros((length, len(channels)), dtype=np.int16)
    for index, channel in enumerate(channels):
        data = np.asarray(channel)
        if np.issubdtype(data.dtype, np.floating):
            data = np.round(data)
        frames[: len(data), index] = np.clip(data, -32768, 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(len(channels))
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames.astype("<i2").tobytes())
