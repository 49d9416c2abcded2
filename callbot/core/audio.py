"""Audio conversion between Twilio (G.711 mu-law, 8 kHz) and OpenAI Realtime (PCM16 LE, 24 kHz).

Pure and synchronous: no I/O, no clock, no asyncio, only numpy. It follows the comparison in
docs/audio.md §2: a streaming 96-tap Kaiser polyphase FIR (3x up, 3x down) and numpy lookup
tables for mu-law.

* Latency: the linear-phase FIR adds only its group delay, 47.5 samples at 24 kHz (1.98 ms) per
  direction, and every call returns all it can (block resamplers such as soxr hold tens of ms
  back and release them in bursts, docs/audio.md §7).
* No clicks: filter history (and, going down, the input phase) is carried between calls, so any
  chunking gives output bit-identical to one-block processing.
* Determinism: coefficients sit on a 2**-30 grid and samples are integers, so every product and
  partial sum is exact in float64 and the result cannot depend on BLAS summation order or block
  sizes. Rounding to int16 saturates and never dithers.
* Cost: one small BLAS product per call over blocks of 16 samples; no Python loop over samples.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt

Int16Array = npt.NDArray[np.int16]
FloatArray = npt.NDArray[np.float64]
Mode = Literal["pcm24k", "pcmu"]

TAPS = 96
"""Filter length: 96 taps keep the 3.4 kHz image at about -78 dB; 48 would leave it near -40 dB."""
_BLOCK = 16  # outputs (down) or inputs (up) per row of the block-Toeplitz product
_QUANT = float(2**30)  # coefficient grid: int16 x coeff sums stay exact in float64's 53 bits
_UP_HIST = TAPS // 3 - 1  # 31 input samples of history at 8 kHz
_DOWN_HIST = TAPS - 1  # 95 input samples of history at 24 kHz
_STEP = np.dtype(np.float64).itemsize


def _build_ulaw_decode() -> Int16Array:
    """The 256 G.711 code words as linear 16-bit samples (same values as audioop.ulaw2lin)."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF  # code words are transmitted bit-inverted
    mag = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - mag, mag - 0x84).astype(np.int16)


def _build_ulaw_encode() -> npt.NDArray[np.uint8]:
    """Code word for every int16 sample, indexed by its uint16 bit pattern (as audioop.lin2ulaw).
    G.711 on 14-bit samples: floor shift by 2, clip the magnitude to 8159, add the bias 33; the
    segment is the first of 8 limits the biased magnitude does not exceed."""
    pcm = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32) >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), 8159) + 33
    seg = np.searchsorted(np.array([(0x40 << i) - 1 for i in range(8)]), mag, side="left")
    code = (np.minimum(seg, 7) << 4) | ((mag >> (seg + 1)) & 0x0F)
    code = np.where(seg >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


_ULAW_DECODE = _build_ulaw_decode()
_ULAW_DECODE_F64 = _ULAW_DECODE.astype(np.float64)  # decode straight into the filter's dtype
_ULAW_ENCODE = _build_ulaw_encode()

ULAW_SILENCE = 0xFF
"""mu-law code for 0 (0x7F also decodes to 0); used to pad partial frames."""


def ulaw_decode(data: bytes) -> Int16Array:
    """Decode G.711 mu-law bytes to int16 samples with a 256-entry table."""
    return _ULAW_DECODE.take(np.frombuffer(data, dtype=np.uint8))


def ulaw_encode(pcm: Int16Array) -> bytes:
    """Encode int16 samples to G.711 mu-law bytes with a 65536-entry table (bit-exact with audioop)."""
    if pcm.dtype != np.int16:
        raise TypeError(f"ulaw_encode needs int16 samples, got {pcm.dtype}")
    return _ULAW_ENCODE.take(pcm.view(np.uint16)).tobytes()


def design_lowpass(
    taps: int = TAPS, cutoff_hz: float = 4000.0, rate_hz: float = 24000.0, beta: float = 7.43
) -> FloatArray:
    """Kaiser-windowed sinc low-pass with unit DC gain. The defaults put -6 dB at 4 kHz (the 8 kHz
    Nyquist) at 24 kHz; beta 7.43 gives ~75 dB stopband from 4.6 kHz, passband flat to 3.4 kHz."""
    n = np.arange(taps) - (taps - 1) / 2.0
    fc = cutoff_hz / rate_hz
    h: FloatArray = 2.0 * fc * np.sinc(2.0 * fc * n) * np.kaiser(taps, beta)
    return h / float(h.sum())


def _banks(h: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Block-Toeplitz matrices, so one BLAS product per call filters a whole block of samples.

    up (B+31, 3B): B inputs after 31 of history -> 3B outputs, y[3n+p] = sum_k 3h[3k+p] x[n-k]
    (gain 3 makes up for the inserted zeros). down (3B+93, B): output j is row[3j : 3j+96] against
    the reversed taps. Taps are rounded to the 2**-30 grid that keeps the sums exact.
    """
    g_up, g_down = np.round(3.0 * h * _QUANT) / _QUANT, (np.round(h * _QUANT) / _QUANT)[::-1]
    up, down = np.zeros((_BLOCK + _UP_HIST, 3 * _BLOCK)), np.zeros((3 * _BLOCK + TAPS - 3, _BLOCK))
    for n in range(_BLOCK):
        down[3 * n : 3 * n + TAPS, n] = g_down
        for k in range(_UP_HIST + 1):
            up[n + _UP_HIST - k, 3 * n : 3 * n + 3] = g_up[3 * k : 3 * k + 3]
    return up, down


LOWPASS = design_lowpass()
_UP_BANK, _DOWN_BANK = _banks(LOWPASS)


def _loud_codes(bank: FloatArray) -> bytes:
    """A `bytes.translate` table: 1 for the mu-law codes loud enough that a filter output could
    pass int16 (the largest sum of |taps| of one output, 2.41 for the upsampler, times the
    sample), 0 for the rest. A block of only quiet codes needs no saturation."""
    gain = float(np.abs(bank).sum(axis=0).max())
    quiet = int(32767 / gain) - 1  # one LSB of margin for the float sum of the gains
    return bytes(int(abs(int(v)) > quiet) for v in _ULAW_DECODE)


def _build_ulaw_encode_saturating() -> npt.NDArray[np.uint8]:
    """`_ULAW_ENCODE` indexed by a rounded filter output as int32 in [-65536, 65535] (negative
    indices count from the end), saturating to int16 on the way: one lookup instead of two
    bounds, a cast and the lookup. The downsampler's outputs stay within 1.95 x 32768."""
    v = np.arange(2 * 65536, dtype=np.int64)
    v = np.where(v < 65536, v, v - 2 * 65536)  # the value each index stands for
    return _ULAW_ENCODE.take(np.clip(v, -32768, 32767).astype(np.int16).view(np.uint16))


_UP_LOUD = _loud_codes(_UP_BANK)
_ULAW_ENCODE_SAT = _build_ulaw_encode_saturating()
for _table in (_ULAW_DECODE, _ULAW_DECODE_F64, _ULAW_ENCODE, _ULAW_ENCODE_SAT, LOWPASS, _UP_BANK, _DOWN_BANK):
    _table.setflags(write=False)  # shared by every call: make accidental writes fail loudly


def _to_int16(y: FloatArray) -> Int16Array:
    """Round half to even and saturate, in place: np.clip's Python wrapper costs more than the work
    on one frame (how much: bench/README.md#code-figures)."""
    np.rint(y, out=y)
    np.minimum(y, 32767.0, out=y)
    np.maximum(y, -32768.0, out=y)
    return y.astype(np.int16)


def _rows(buf: FloatArray, nrows: int, width: int, stride: int) -> FloatArray:
    """Overlapping rows of buf without copying, through the np.ndarray constructor: as_strided's
    per-call overhead is many times larger (bench/README.md#code-figures)."""
    return np.ndarray((nrows, width), np.float64, buf, 0, (stride * _STEP, _STEP))


class Upsampler3:
    """8 kHz -> 24 kHz, streaming. The 31 samples of history stay in the work buffer (the tail of
    the previous input), so each call copies them once to the front."""

    def __init__(self) -> None:
        self._buf, self._at = np.zeros(_UP_HIST), 0  # the history is _buf[_at : _at + 31]
        self._n, self._win = -1, np.zeros((0, 0))

    def reset(self) -> None:
        """Forget the history, as for a new stream."""
        self._buf[self._at : self._at + _UP_HIST] = 0.0

    def process(self, x: Int16Array | FloatArray) -> Int16Array:
        """Return exactly 3*len(x) samples at 24 kHz (x: int16, or float64 holding int16 values)."""
        n = len(x)
        if n == 0:
            return np.zeros(0, dtype=np.int16)
        hist = self._buf[self._at : self._at + _UP_HIST]
        if n != self._n:  # Twilio frames are always 160 samples, so this runs once per call
            nb = -(-n // _BLOCK)
            buf = np.zeros(nb * _BLOCK + _UP_HIST)
            self._win, self._n = _rows(buf, nb, _BLOCK + _UP_HIST, _BLOCK), n
        else:
            buf = self._buf
        buf[:_UP_HIST] = hist  # numpy copes with the overlap when n < 31
        buf[_UP_HIST : _UP_HIST + n] = x
        self._buf, self._at = buf, n
        y: FloatArray = np.dot(self._win, _UP_BANK)
        return _to_int16(y.reshape(-1)[: 3 * n])


class Downsampler3:
    """24 kHz -> 8 kHz with anti-alias filtering, streaming, for input of any length.

    Output m is the filter at input index 3m. The work buffer keeps the 93-95 input samples the
    next output's window already holds, so the phase survives deltas of any size."""

    def __init__(self) -> None:
        self._buf = np.zeros(3 * _BLOCK * 10 + _DOWN_HIST)
        self._win_nb, self._win = -1, np.zeros((0, 0))
        self.reset()

    def reset(self) -> None:
        """Drop history and pending samples (e.g. on barge-in): nothing stale can come out."""
        self._buf[:_DOWN_HIST] = 0.0
        self._at, self._npend = 0, _DOWN_HIST  # pending samples are _buf[_at : _at + _npend]
        self._dirty = False

    def process(self, x: Int16Array | FloatArray) -> Int16Array:
        """Return every output sample whose input window is complete (about len(x)/3)."""
        return _to_int16(self.filter(x))

    def filter(self, x: Int16Array | FloatArray) -> FloatArray:
        """`process` before the rounding: the exact filter outputs as float64 (each a multiple of
        2**-30), for a caller that rounds them its own way."""
        p = self._npend
        total = p + len(x)
        count = (total - (TAPS - 3)) // 3
        nb = -(-count // _BLOCK)
        need = max(total, 3 * _BLOCK * nb + TAPS - 3)
        pending = self._buf[self._at : self._at + p]
        buf = self._buf if len(self._buf) >= need else np.zeros(2 * need)
        if buf is not self._buf:
            self._win_nb = -1
        buf[:p] = pending
        buf[p:total] = x
        self._buf, self._at, self._npend = buf, 3 * count, total - 3 * count
        self._dirty = self._dirty or len(x) > 0
        if count == 0:
            return np.zeros(0)
        if nb != self._win_nb:
            self._win = _rows(buf, nb, 3 * _BLOCK + TAPS - 3, 3 * _BLOCK)
            self._win_nb = nb
        # Rows past `count` read stale (finite) samples; those outputs are discarded.
        y: FloatArray = np.dot(self._win, _DOWN_BANK)
        return y.reshape(-1)[:count]

    def flush(self) -> Int16Array:
        """Push zeros until every output touched by real input is out (~4 ms: 2 ms of delayed
        content plus the filter's decaying tail), then reset. Empty if nothing was fed."""
        if not self._dirty:
            self.reset()
            return np.zeros(0, dtype=np.int16)
        n_out = (self._npend - 1) // 3 + 1  # windows that still start at or before the last input
        out = self.process(np.zeros(3 * (n_out - 1) + TAPS - self._npend))
        self.reset()
        return out


class Framer:
    """Re-chunks a byte stream into exact frames (Twilio plays 160-byte = 20 ms mu-law frames)."""

    def __init__(self, frame_bytes: int = 160) -> None:
        if frame_bytes <= 0:
            raise ValueError("frame_bytes must be positive")
        self.frame_bytes = frame_bytes
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held back because they do not fill a frame yet."""
        return len(self._buf)

    def push(self, data: bytes) -> list[bytes]:
        """Append data and return all complete frames, oldest first."""
        fb = self.frame_bytes
        if not self._buf and len(data) == fb:
            return [bytes(data)]  # the common case: no copy into the buffer
        buf = self._buf
        buf += data
        end = len(buf) - len(buf) % fb
        if end == 0:
            return []
        frames = [bytes(buf[i : i + fb]) for i in range(0, end, fb)]
        del buf[:end]
        return frames

    def flush(self, pad: int = ULAW_SILENCE) -> bytes | None:
        """Return the remainder padded to a full frame with `pad` (mu-law silence), or None."""
        if not self._buf:
            return None
        frame = bytes(self._buf) + bytes([pad]) * (self.frame_bytes - len(self._buf))
        self._buf.clear()
        return frame

    def clear(self) -> None:
        """Drop the remainder (barge-in: it must not be played)."""
        self._buf.clear()


class _Converter:
    """Mode handling shared by both directions: "pcm24k" is PCM16 LE 24 kHz on the Realtime side;
    with "pcmu" the session speaks G.711 itself and bytes pass through untouched."""

    def __init__(self, mode: Mode) -> None:
        if mode not in ("pcm24k", "pcmu"):
            raise ValueError(f"unknown audio mode {mode!r}; expected 'pcm24k' or 'pcmu'")
        self.mode: Mode = mode
        self._pass = mode == "pcmu"

    @property
    def passthrough(self) -> bool:
        """True when no conversion happens (pcmu)."""
        return self._pass


_ULAW_HISTORY = bytes([ULAW_SILENCE]) * _UP_HIST
_ULAW_PAD = bytes([ULAW_SILENCE]) * (_BLOCK - 1)


class InboundConverter(_Converter):
    """Twilio -> OpenAI for one call: mu-law 8 kHz to the Realtime input format.

    The same filter as `Upsampler3`, bit for bit, specialised for mu-law input: the history is
    kept as the last 31 mu-law bytes, so one table lookup decodes history and frame together
    into a fresh work buffer. That saves the history copy and the assignment into a persistent
    buffer: a third of the numpy calls per 20 ms frame, and numpy's per-call overhead is where
    the time goes (the profile: bench/README.md, step 5 of the optimisation table).
    """

    def __init__(self, mode: Mode) -> None:
        super().__init__(mode)
        self._history = _ULAW_HISTORY  # mu-law 0xFF decodes to 0: the same as zeroed history
        self._bank = _UP_BANK

    def convert(self, ulaw: bytes) -> bytes:
        """Return the Realtime input bytes for one chunk of Twilio mu-law (3x as many samples)."""
        if self._pass:
            return ulaw
        n = len(ulaw)
        if n == 0:
            return b""
        codes = self._history + ulaw
        self._history = codes[-_UP_HIST:]
        rows = -(-n // _BLOCK)
        if n % _BLOCK:
            codes += _ULAW_PAD[: rows * _BLOCK - n]  # outputs of the padding are cut off below
        x = _ULAW_DECODE_F64.take(np.frombuffer(codes, dtype=np.uint8))
        y: FloatArray = np.dot(_rows(x, rows, _BLOCK + _UP_HIST, _BLOCK), self._bank)
        if n % _BLOCK:
            y = y.reshape(-1)[: 3 * n]
        # int16 in native order: little-endian on every supported CPU
        if 1 in codes.translate(_UP_LOUD):  # a sample above -7.6 dBFS: an output may overshoot
            return _to_int16(y).tobytes()
        return np.rint(y, out=y).astype(np.int16).tobytes()  # no output can pass int16

    def reset(self) -> None:
        """Forget filter history (e.g. when the stream restarts)."""
        self._history = _ULAW_HISTORY


class OutboundConverter(_Converter):
    """OpenAI -> Twilio for one call: Realtime output bytes to mu-law 8 kHz (frame it with Framer).

    Deltas may have any length; an odd trailing byte waits for the next call so samples never split.
    """

    def __init__(self, mode: Mode) -> None:
        super().__init__(mode)
        self._down = Downsampler3()
        self._odd = b""

    @property
    def bytes_per_ms(self) -> int:
        """Input bytes per ms of audio (48 for PCM16 24 kHz, 8 for mu-law): generated bytes -> ms."""
        return 8 if self._pass else 48

    def convert(self, audio: bytes) -> bytes:
        """Return the mu-law 8 kHz bytes for one Realtime audio delta."""
        if self._pass:
            return audio
        if self._odd:
            audio = self._odd + audio
        even = len(audio) & ~1
        self._odd = bytes(audio[even:])
        y = self._down.filter(np.frombuffer(audio[:even], dtype="<i2"))
        return _ULAW_ENCODE_SAT.take(np.rint(y, out=y).astype(np.int32)).tobytes()

    def flush(self) -> bytes:
        """Mu-law of the filter tail at the end of a response (b"" for pcmu); then starts afresh.
        A stray odd byte cannot form a sample and is dropped."""
        self._odd = b""
        if self._pass:
            return b""
        return ulaw_encode(self._down.flush())

    def reset(self) -> None:
        """Drop all state (barge-in): no stale samples come out of the next convert or flush."""
        self._odd = b""
        self._down.reset()
