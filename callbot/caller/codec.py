"""A tiny numpy G.711 mu-law codec for the caller simulator.

The simulator keeps its own codec rather than importing the production one so that a bug in
`callbot.core.audio` cannot hide itself: the caller encodes and decodes with an independent,
textbook implementation (bias 0x84, clip 32635, bits inverted on the wire).
"""

from __future__ import annotations

import numpy as np

FRAME_BYTES = 160
"""One 20 ms mu-law frame at 8 kHz, the unit Twilio streams in."""

FRAME_MS = 20
SAMPLE_RATE = 8000
SILENCE_BYTE = 0xFF
"""Mu-law of 0: Twilio fills gaps in the caller's audio with it."""

_BIAS = 0x84
_CLIP = 32635


def _build_decode_table() -> np.ndarray:
    """All 256 mu-law codes decoded once; read-only so it cannot turn into shared mutable state."""
    codes = np.arange(256, dtype=np.int32)
    inverted = ~codes & 0xFF
    sign = inverted & 0x80
    exponent = (inverted >> 4) & 0x07
    mantissa = inverted & 0x0F
    magnitude = (((mantissa << 3) + _BIAS) << exponent) - _BIAS
    table = np.where(sign != 0, -magnitude, magnitude).astype(np.int16)
    table.flags.writeable = False
    return table


_DECODE_TABLE = _build_decode_table()


def mulaw_decode(data: bytes | bytearray | memoryview) -> np.ndarray:
    """Decode raw mu-law bytes to int16 PCM at the same rate."""
    codes = np.frombuffer(bytes(data), dtype=np.uint8)
    return _DECODE_TABLE[codes]


def mulaw_encode(pcm: np.ndarray) -> bytes:
    """Encode int16 PCM (any integer or float array in int16 range) to raw mu-law bytes."""
    x = np.clip(np.asarray(pcm, dtype=np.int32), -32768, 32767)
    sign = np.where(x < 0, 0x80, 0x00)
    magnitude = np.minimum(np.abs(x), _CLIP) + _BIAS
    # Position of the highest set bit above bit 7 selects the segment (0..7).
    exponent = np.clip(np.floor(np.log2(magnitude)).astype(np.int32) - 7, 0, 7)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    code = ~(sign | (exponent << 4) | mantissa) & 0xFF
    return code.astype(np.uint8).tobytes()


def silence_frame() -> bytes:
    """One 20 ms frame of mu-law silence (160 x 0xFF), exactly what Twilio streams when nobody talks."""
    return bytes([SILENCE_BYTE]) * FRAME_BYTES
