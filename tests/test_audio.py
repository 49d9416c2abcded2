"""Tests for callbot.core.audio: G.711 exactness, streaming identity, filter quality, converters.

Quality tests use 1 s periodic signals so rectangular-window FFT bins (1 Hz apart) are exact; they
feed two periods through the streaming path in 20 ms frames and measure the second period, after
the filter has settled.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

if importlib.util.find_spec("callbot") is None:  # plain `pytest` from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callbot.core import audio
from callbot.core.audio import (
    LOWPASS,
    Downsampler3,
    Framer,
    InboundConverter,
    OutboundConverter,
    Upsampler3,
    design_lowpass,
    ulaw_decode,
    ulaw_encode,
)
from callbot.testing.speech import synth_speech

LO, HI = 8000, 24000
AMP = 32767 * 10 ** (-6 / 20)  # -6 dBFS
DELAY_24K = (len(LOWPASS) - 1) / 2  # 47.5 samples at 24 kHz per direction


def _audioop() -> ModuleType:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pytest.importorskip("audioop")


def tone(freq: float, rate: int, seconds: int = 2, amp: float = AMP) -> np.ndarray:
    n = np.arange(rate * seconds)
    return np.rint(amp * np.sin(2 * np.pi * freq * n / rate)).astype(np.int16)


def multitone(freqs: list[int], rate: int, amp: float, seed: int = 0) -> np.ndarray:
    phases = np.random.default_rng(seed).uniform(0, 2 * np.pi, len(freqs))
    n = np.arange(2 * rate)
    x = sum(amp * np.sin(2 * np.pi * f * n / rate + ph) for f, ph in zip(freqs, phases, strict=True))
    return np.rint(x).astype(np.int16)


def band_noise(rate: int, lo: int = 300, hi: int = 3400, seed: int = 0) -> np.ndarray:
    """Two periods of 1 s periodic noise with flat magnitude in [lo, hi] Hz, about -20 dBFS RMS."""
    spec = np.zeros(rate // 2 + 1, dtype=complex)
    spec[lo : hi + 1] = np.exp(1j * np.random.default_rng(seed).uniform(0, 2 * np.pi, hi - lo + 1))
    x = np.fft.irfft(spec, rate)
    x *= 3276.7 / np.sqrt(np.mean(x**2))
    return np.rint(np.tile(x, 2)).astype(np.int16)


def stream_up(x: np.ndarray, frame: int = 160) -> np.ndarray:
    up = Upsampler3()
    return np.concatenate([up.process(x[i : i + frame]) for i in range(0, len(x), frame)])


def stream_down(x: np.ndarray, frame: int = 480) -> np.ndarray:
    down = Downsampler3()
    return np.concatenate([down.process(x[i : i + frame]) for i in range(0, len(x), frame)])


def second_period(y: np.ndarray, rate: int) -> np.ndarray:
    """The second second of a stream: whole periods after the ~4 ms the filter needs to settle."""
    return y[rate : 2 * rate].astype(np.float64)


def group_delay_s(x_period: np.ndarray, y_period: np.ndarray) -> float:
    """Delay from the phase slope of Y/X over 300-3400 Hz (1 Hz bins)."""
    k = np.arange(300, 3401)
    phase = np.unwrap(np.angle(np.fft.rfft(y_period)[k] / np.fft.rfft(x_period)[k]))
    return float(-np.polyfit(2 * np.pi * k, phase, 1)[0])


# --- mu-law -----------------------------------------------------------------------------------


def test_ulaw_decode_matches_audioop_for_all_codes() -> None:
    audioop = _audioop()
    codes = bytes(range(256))
    expected = np.frombuffer(audioop.ulaw2lin(codes, 2), dtype=np.int16)
    np.testing.assert_array_equal(ulaw_decode(codes), expected)


def test_ulaw_encode_matches_audioop_for_all_int16() -> None:
    audioop = _audioop()
    pcm = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    assert ulaw_encode(pcm) == audioop.lin2ulaw(pcm.tobytes(), 2)


def test_ulaw_silence_and_idempotence() -> None:
    np.testing.assert_array_equal(ulaw_decode(b"\xff\x7f"), [0, 0])
    assert ulaw_encode(np.zeros(3, dtype=np.int16)) == b"\xff\xff\xff"
    levels = ulaw_decode(bytes(range(256)))
    # Every decoded level is a fixed point: re-encoding and decoding changes nothing.
    np.testing.assert_array_equal(ulaw_decode(ulaw_encode(levels)), levels)
    with pytest.raises(TypeError):
        ulaw_encode(np.zeros(4, dtype=np.float64))


def test_tables_and_filter_are_read_only() -> None:
    for name in ("LOWPASS", "_ULAW_DECODE", "_ULAW_DECODE_F64", "_ULAW_ENCODE", "_UP_BANK", "_DOWN_BANK"):
        assert not getattr(audio, name).flags.writeable, name
    with pytest.raises(ValueError, match="read-only"):
        LOWPASS[0] = 1.0
    decoded = ulaw_decode(b"\x00")
    decoded[0] = 0  # results are fresh arrays, never views of the shared tables
    assert ulaw_decode(b"\x00")[0] == -32124


# --- filter design ----------------------------------------------------------------------------


def test_design_lowpass_response() -> None:
    h = design_lowpass()
    assert h.shape == (96,)
    np.testing.assert_allclose(h, h[::-1])  # linear phase
    np.testing.assert_allclose(h, LOWPASS)
    f = np.arange(4 * HI // 2 + 1) / 4
    db = 20 * np.log10(np.abs(np.fft.rfft(h, 4 * HI)) + 1e-300)
    assert np.max(np.abs(db[f <= 3400])) < 0.01
    assert np.max(db[f >= 4600]) < -74.0
    assert abs(db[f == 4000][0] + 6.0) < 0.1


# --- streaming identity -----------------------------------------------------------------------


def test_upsampler_frames_equal_one_block() -> None:
    rng = np.random.default_rng(1)
    x = rng.integers(-32768, 32768, 8000).astype(np.int16)  # full scale: exercises saturation
    block = Upsampler3().process(x)
    assert block.dtype == np.int16 and len(block) == 3 * len(x)
    assert block.max() == 32767 and block.min() == -32768
    np.testing.assert_array_equal(stream_up(x, 160), block)
    up = Upsampler3()
    sizes = rng.integers(1, 400, 100)
    parts, i = [], 0
    for k in sizes:
        parts.append(up.process(x[i : i + k]))
        assert len(parts[-1]) == 3 * len(x[i : i + k])
        i += k
    np.testing.assert_array_equal(np.concatenate(parts), block[: 3 * i])


def test_matches_direct_convolution_and_saturates() -> None:
    """A full-scale square wave overshoots (Gibbs): outputs must equal the clipped direct FIR."""
    square8 = np.where((np.arange(LO) // 8) % 2 == 0, 32767, -32768).astype(np.int16)
    zero_stuffed = np.zeros(HI)
    zero_stuffed[::3] = square8
    ref_up = np.convolve(zero_stuffed, 3 * LOWPASS)[:HI]
    square24 = np.repeat(square8, 3)
    ref_down = np.convolve(square24.astype(np.float64), LOWPASS)[:HI:3]
    for out, ref in ((Upsampler3().process(square8), ref_up), (Downsampler3().process(square24), ref_down)):
        assert ref.max() > 33000 and ref.min() < -33000
        assert np.max(np.abs(out - np.clip(ref, -32768, 32767))) <= 0.5 + 1e-6
        assert out.max() == 32767 and out.min() == -32768


def test_upsampler_reset_forgets_history() -> None:
    up = Upsampler3()
    up.process(tone(1000, LO, 1))
    up.reset()
    assert not up.process(np.zeros(160, dtype=np.int16)).any()


@pytest.mark.parametrize("max_chunk", [4800, 5])
def test_downsampler_random_chunks_equal_one_block(max_chunk: int) -> None:
    rng = np.random.default_rng(2)
    x = rng.integers(-32768, 32768, 5 * HI if max_chunk > 5 else HI // 4).astype(np.int16)
    block = Downsampler3().process(x)
    assert len(block) == -(-len(x) // 3)
    down = Downsampler3()
    parts, i = [], 0
    while i < len(x):
        k = int(rng.integers(1, max_chunk + 1))
        parts.append(down.process(x[i : i + k]))
        i += k
    np.testing.assert_array_equal(np.concatenate(parts), block)


def test_downsampler_flush_emits_the_tail_then_resets() -> None:
    x = tone(1000, HI, 1)[:4801]  # not a multiple of 3
    down = Downsampler3()
    streamed = np.concatenate([down.process(x[:1000]), down.process(x[1000:]), down.flush()])
    padded = Downsampler3().process(np.concatenate([x, np.zeros(300, dtype=np.int16)]))
    np.testing.assert_array_equal(streamed, padded[: len(streamed)])
    assert not padded[len(streamed) :].any()  # nothing audible left behind
    tail = len(streamed) - -(-len(x) // 3)
    assert 16 <= tail <= 33  # >= the 2 ms group delay at 8 kHz, <= the whole 96-tap window
    assert len(down.flush()) == 0
    np.testing.assert_array_equal(down.process(x), Downsampler3().process(x))


def test_framer_exact_frames_and_every_byte() -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, 10_001).astype(np.uint8).tobytes()
    framer = Framer()
    frames: list[bytes] = []
    i = 0
    while i < len(data):
        k = int(rng.integers(1, 700))
        frames += framer.push(data[i : i + k])
        i += k
    assert all(len(f) == 160 for f in frames)
    assert framer.pending == len(data) % 160
    last = framer.flush()
    assert last is not None and len(last) == 160
    assert b"".join(frames) + last[: len(data) % 160] == data
    assert last[len(data) % 160 :] == b"\xff" * (160 - len(data) % 160)
    assert framer.pending == 0 and framer.flush() is None
    assert framer.push(b"\x01" * 200) == [b"\x01" * 160]
    framer.clear()
    assert framer.pending == 0 and framer.flush() is None


# --- quality ----------------------------------------------------------------------------------


@pytest.mark.parametrize("freq", [1000, 3400])
def test_upsampler_image_rejection(freq: int) -> None:
    power = np.abs(np.fft.rfft(second_period(stream_up(tone(freq, LO)), HI))) ** 2
    image_db = 10 * np.log10(power[4001:].sum() / power[freq])
    assert image_db < -70.0


@pytest.mark.parametrize("freq", [5000, 7000, 9000, 11000])
def test_downsampler_alias_rejection(freq: int) -> None:
    x = tone(freq, HI)
    out = second_period(stream_down(x), LO)
    in_power = np.mean(second_period(x, HI) ** 2)
    assert np.mean(out**2) <= in_power * 10 ** (-70 / 10)


FLAT_FREQS = [300, 500, 700, 1000, 1500, 2000, 2500, 3000, 3200, 3400]


def test_passband_flatness_both_directions() -> None:
    x8 = multitone(FLAT_FREQS, LO, 2000.0)
    y24 = stream_up(x8)
    up_gain = np.abs(np.fft.rfft(second_period(y24, HI))[FLAT_FREQS]) / HI
    up_gain /= np.abs(np.fft.rfft(second_period(x8, LO))[FLAT_FREQS]) / LO
    x24 = multitone(FLAT_FREQS, HI, 2000.0, seed=1)
    y8 = stream_down(x24)
    down_gain = np.abs(np.fft.rfft(second_period(y8, LO))[FLAT_FREQS]) / LO
    down_gain /= np.abs(np.fft.rfft(second_period(x24, HI))[FLAT_FREQS]) / HI
    assert np.max(np.abs(20 * np.log10(up_gain))) < 0.1
    assert np.max(np.abs(20 * np.log10(down_gain))) < 0.1


def test_group_delay_is_about_2_ms_each_way() -> None:
    x8 = band_noise(LO)
    up_delay = group_delay_s(second_period(x8, LO), second_period(stream_up(x8), HI))
    x24 = band_noise(HI)
    down_delay = group_delay_s(second_period(x24, HI), second_period(stream_down(x24), LO))
    for delay in (up_delay, down_delay):
        assert 1.5e-3 <= delay <= 2.5e-3
        assert abs(delay - DELAY_24K / HI) < 0.02e-3


def _speech_24k() -> np.ndarray:
    """3 s of synthetic speech band-limited to 300-3400 Hz (FFT brick wall) at -20.6 dBFS RMS."""
    x = synth_speech(3000, HI, seed=7).astype(np.float64)
    spec = np.fft.rfft(x)
    f = np.fft.rfftfreq(len(x), 1 / HI)
    spec[(f < 300) | (f > 3400)] = 0
    x = np.fft.irfft(spec, len(x))
    return np.rint(x * 32767 * 10 ** (-20.6 / 20) / np.sqrt(np.mean(x**2))).astype(np.int16)


def _snr_db(ref: np.ndarray, out: np.ndarray) -> float:
    """SNR of out against ref after a least-squares gain; edges (brick-wall wrap) skipped."""
    n = min(len(ref), len(out))
    r, o = ref[2400 : n - 2400].astype(np.float64), out[2400 : n - 2400].astype(np.float64)
    gain = np.dot(o, r) / np.dot(r, r)
    return float(10 * np.log10(np.sum((gain * r) ** 2) / np.sum((o - gain * r) ** 2)))


def _best_lag(ref: np.ndarray, out: np.ndarray) -> int:
    r = ref[:-200].astype(np.float64)
    return max(range(60, 131), key=lambda lag: float(np.dot(out[lag : lag + len(r)], r)))


def test_round_trip_snr_speech() -> None:
    x = _speech_24k()
    outbound, inbound = OutboundConverter("pcm24k"), InboundConverter("pcm24k")
    pcm = x.tobytes()
    ulaw = b"".join(outbound.convert(pcm[i : i + 960]) for i in range(0, len(pcm), 960)) + outbound.flush()
    back = b"".join(inbound.convert(ulaw[i : i + 160]) for i in range(0, len(ulaw), 160))
    y = np.frombuffer(back, dtype="<i2")
    lag = _best_lag(x, y)
    assert lag == 2 * DELAY_24K  # 95 samples = 3.96 ms round trip, an integer at 24 kHz
    assert _snr_db(x, y[lag : lag + len(x)]) > 35.0  # G.711 limit is ~37-38 dB
    # Without mu-law the resamplers alone are far cleaner: the codec sets the limit.
    linear = stream_up(stream_down(np.concatenate([x, np.zeros(300, dtype=np.int16)])))
    assert _snr_db(x, linear[lag : lag + len(x)]) > 70.0


# --- converters -------------------------------------------------------------------------------


def test_pcmu_mode_is_passthrough() -> None:
    data = bytes(range(160))
    inbound, outbound = InboundConverter("pcmu"), OutboundConverter("pcmu")
    assert inbound.passthrough and outbound.passthrough
    assert inbound.convert(data) == data and outbound.convert(data) == data
    assert outbound.convert(b"\x01") == b"\x01"  # odd lengths are fine for mu-law
    assert outbound.flush() == b""
    assert outbound.bytes_per_ms == 8


def test_pcm24k_converters_shapes_and_values() -> None:
    inbound, outbound = InboundConverter("pcm24k"), OutboundConverter("pcm24k")
    assert not inbound.passthrough and not outbound.passthrough
    assert outbound.bytes_per_ms == 48
    ulaw = ulaw_encode(tone(440, LO, 1)[:160])
    pcm = inbound.convert(ulaw)
    assert len(pcm) == 960
    np.testing.assert_array_equal(np.frombuffer(pcm, "<i2"), Upsampler3().process(ulaw_decode(ulaw)))
    assert len(outbound.convert(pcm)) == 160
    with pytest.raises(ValueError, match="unknown audio mode 'pcm16'"):
        InboundConverter("pcm16")  # type: ignore[arg-type]


def test_inbound_mu_law_path_is_bit_identical_to_the_generic_upsampler_for_any_chunking() -> None:
    """The converter keeps its history as mu-law bytes (the optimised path); the result must be
    exactly Upsampler3 on the decoded samples, whatever the chunk sizes, and after a reset."""
    rng = np.random.default_rng(7)
    ulaw = rng.integers(0, 256, 12_000, dtype=np.uint8).tobytes()
    for sizes in ([160] * 75, list(rng.integers(1, 400, 60))):
        inbound, reference = InboundConverter("pcm24k"), Upsampler3()
        out, ref, at = [], [], 0
        for size in sizes:
            chunk = ulaw[at : at + int(size)]
            at += len(chunk)
            out.append(inbound.convert(chunk))
            ref.append(reference.process(ulaw_decode(chunk)).astype("<i2").tobytes())
        assert b"".join(out) == b"".join(ref) and len(b"".join(out)) == 6 * at
        inbound.reset()
        assert inbound.convert(ulaw[:160]) == Upsampler3().process(ulaw_decode(ulaw[:160])).tobytes()
    assert InboundConverter("pcm24k").convert(b"") == b""


def test_inbound_quiet_blocks_skip_saturation_and_give_the_same_samples() -> None:
    """Blocks of only quiet codes (at most -7.6 dBFS, where no output can pass int16) are
    rounded without the bounds; loud ones, including a loud sample still in the 31 of history,
    take the saturating path. Both must be Upsampler3's samples exactly."""
    decoded = np.abs(audio._ULAW_DECODE.astype(np.int64))
    quiet_codes = np.flatnonzero(np.frombuffer(audio._UP_LOUD, np.uint8) == 0).astype(np.uint8)
    assert 0 < decoded[quiet_codes].max() * np.abs(audio._UP_BANK).sum(axis=0).max() <= 32767
    loudest_quiet = quiet_codes[np.argmax(decoded[quiet_codes])]
    rng = np.random.default_rng(11)
    quiet = rng.choice(quiet_codes, 4800).astype(np.uint8)
    quiet[::7] = loudest_quiet  # the bound itself, often
    full_scale = bytes([0x00, 0x80]) * 80  # -32124 and +32124: overshoot guaranteed
    stream = [quiet[i : i + 480].tobytes() for i in range(0, 4800, 480)]
    stream[4] = full_scale  # then three quiet blocks whose history starts loud
    inbound, reference = InboundConverter("pcm24k"), Upsampler3()
    for chunk in [*stream, full_scale[:17], quiet[:160].tobytes()]:
        want = reference.process(ulaw_decode(chunk))
        assert inbound.convert(chunk) == want.tobytes()
    assert want.dtype == np.int16
    assert np.frombuffer(InboundConverter("pcm24k").convert(full_scale), np.int16).max() == 32767


def test_outbound_saturating_encode_table_is_clip_then_ulaw_encode() -> None:
    values = np.arange(-65536, 65536)
    table = audio._ULAW_ENCODE_SAT.take(values.astype(np.int32))
    expected = np.frombuffer(ulaw_encode(np.clip(values, -32768, 32767).astype(np.int16)), np.uint8)
    np.testing.assert_array_equal(table, expected)
    assert np.abs(audio._DOWN_BANK).sum(axis=0).max() * 32768 < 65536  # every output has an entry


def test_outbound_converter_is_ulaw_of_the_saturated_downsampler() -> None:
    """The fused rounding and encoding gives what rounding to int16 and then encoding gave, for
    full-scale noise and a square wave that overshoots."""
    rng = np.random.default_rng(12)
    noise = rng.integers(-32768, 32768, 24_000).astype(np.int16)
    square = np.where((np.arange(24_000) // 24) % 2 == 0, 32767, -32768).astype(np.int16)
    assert Downsampler3().process(square).max() == 32767  # it does overshoot
    for x in (noise, square, synth_speech(500, HI, seed=3)):
        conv, reference = OutboundConverter("pcm24k"), Downsampler3()
        for at in range(0, len(x), 2400):
            part = x[at : at + 2400]
            assert conv.convert(part.tobytes()) == ulaw_encode(reference.process(part))


def test_outbound_odd_length_deltas_match_one_block() -> None:
    pcm = synth_speech(500, HI, seed=4).tobytes()
    block = OutboundConverter("pcm24k").convert(pcm)
    rng = np.random.default_rng(5)
    cuts = np.sort(rng.choice(np.arange(1, len(pcm)), 40, replace=False))
    assert any(c % 2 for c in cuts)
    conv = OutboundConverter("pcm24k")
    parts = [conv.convert(pcm[a:b]) for a, b in zip([0, *cuts], [*cuts, len(pcm)], strict=True)]
    assert conv.convert(b"\x00") == b""  # a lone byte is held, not turned into noise
    assert b"".join(parts) == block


def test_outbound_reset_after_barge_in_leaves_nothing_stale() -> None:
    loud = tone(1000, HI, 1)[:2400].tobytes() + b"\x07"  # 100 ms plus a stray odd byte
    silence = bytes(4800)  # 100 ms of PCM zeros
    stale = OutboundConverter("pcm24k")
    stale.convert(loud)
    assert stale.convert(silence)[:16] != b"\xff" * 16  # without reset the filter still rings
    conv = OutboundConverter("pcm24k")
    conv.convert(loud)
    conv.reset()
    assert conv.convert(silence) == b"\xff" * 800
    assert set(conv.flush()) <= {0xFF}


def test_outbound_flush_emits_the_filter_tail() -> None:
    conv = OutboundConverter("pcm24k")
    x = tone(1000, HI, 1)[:2400]
    body = conv.convert(x.tobytes())
    tail = conv.flush()
    assert len(body) == 800 and 16 <= len(tail) <= 33
    assert tail[:8] != b"\xff" * 8  # the last ~2 ms of the tone comes out of the delay line
    assert conv.flush() == b""
    assert conv.convert(bytes(960)) == b"\xff" * 160  # clean state after the flush
