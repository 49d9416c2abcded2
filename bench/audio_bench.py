"""Benchmark callbot.core.audio against the figures in docs/audio.md §5-§8.

Run: python bench/audio_bench.py [--json out.json] [--calls N]

Measures, for the project's own converters (FIR-96 polyphase + numpy mu-law tables):
* CPU per 20 ms frame each way: median and p99 of per-call perf_counter_ns, and mean CPU from
  process_time over a separate loop; gc disabled, after warm-up. Outbound includes Framer.push,
  as in docs/audio.md §4. Also outbound cost per 20 ms when fed 200 ms deltas.
* Image rejection (8 -> 24 kHz) and alias rejection (24 -> 8 kHz) with 1 s periodic -6 dBFS tones,
  passband flatness, round-trip SNR on band-limited synthetic speech.
* Latency: content delay from the phase slope, and the delay added per output sample relative to
  the end of the 20 ms input frame holding its content.
* Click check: streamed (20 ms frames, random deltas of 1-4800 samples) vs one block, in LSB.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as in docs/audio.md §4; set before numpy loads

import argparse
import contextlib
import gc
import importlib.util
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

if importlib.util.find_spec("callbot") is None:  # run from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callbot.core.audio import (
    Downsampler3,
    Framer,
    InboundConverter,
    OutboundConverter,
    Upsampler3,
    ulaw_decode,
    ulaw_encode,
)
from callbot.testing.speech import synth_speech

LO, HI = 8000, 24000
AMP = 32767 * 10 ** (-6 / 20)
T = TypeVar("T")
ROW = "callbot.core.audio (FIR-96 polyphase + np-LUT)"


def progress(msg: str) -> None:
    print(f"[audio_bench] {msg}", file=sys.stderr, flush=True)


# --- timing -----------------------------------------------------------------------------------


def time_calls(fn: Callable[[T], object], inputs: Sequence[T], calls: int) -> dict[str, float]:
    """Median/p99 wall µs per call and mean CPU µs per call (process_time, separate loop)."""
    m = len(inputs)
    for i in range(500):
        fn(inputs[i % m])
    ns = np.empty(calls, dtype=np.int64)
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for i in range(calls):
            data = inputs[i % m]
            t0 = clock()
            fn(data)
            ns[i] = clock() - t0
        c0 = time.process_time()
        for i in range(calls):
            fn(inputs[i % m])
        cpu = (time.process_time() - c0) / calls
    finally:
        gc.enable()
    return {
        "median_us": float(np.median(ns)) / 1e3,
        "p99_us": float(np.percentile(ns, 99)) / 1e3,
        "mean_cpu_us": cpu * 1e6,
    }


def bench_cpu(calls: int) -> dict[str, Any]:
    speech8 = synth_speech(20_000, LO, seed=1)
    ulaw = ulaw_encode(speech8)
    in_frames = [ulaw[i : i + 160] for i in range(0, len(ulaw), 160)]
    pcm = synth_speech(20_000, HI, seed=2).tobytes()
    out_frames = [pcm[i : i + 960] for i in range(0, len(pcm), 960)]
    deltas = [pcm[i : i + 9600] for i in range(0, len(pcm), 9600)]
    res: dict[str, Any] = {}
    progress(f"timing inbound, {calls} calls")
    res["in"] = time_calls(InboundConverter("pcm24k").convert, in_frames, calls)
    progress(f"timing outbound, {calls} calls")
    out_conv, framer = OutboundConverter("pcm24k"), Framer()
    res["out"] = time_calls(lambda d: framer.push(out_conv.convert(d)), out_frames, calls)
    progress(f"timing outbound with 200 ms deltas, {calls // 4} calls")
    out_conv, framer = OutboundConverter("pcm24k"), Framer()
    big = time_calls(lambda d: framer.push(out_conv.convert(d)), deltas, calls // 4)
    res["out_200ms_per_20ms_cpu_us"] = big["mean_cpu_us"] / 10
    res["calls_per_core"] = 20_000 / (res["in"]["mean_cpu_us"] + res["out"]["mean_cpu_us"])
    progress("timing mu-law codec alone")
    samples = [speech8[i : i + 160] for i in range(0, len(speech8), 160)]
    res["decode"] = time_calls(ulaw_decode, in_frames, calls)
    res["encode"] = time_calls(ulaw_encode, samples, calls)
    return res


# --- quality ----------------------------------------------------------------------------------


def tone(freq: float, rate: int, amp: float = AMP) -> np.ndarray:
    n = np.arange(2 * rate)
    return np.rint(amp * np.sin(2 * np.pi * freq * n / rate)).astype(np.int16)


def band_noise(rate: int, lo: int, hi: int, rms: float = 3276.7, seed: int = 0) -> np.ndarray:
    spec = np.zeros(rate // 2 + 1, dtype=complex)
    spec[lo : hi + 1] = np.exp(1j * np.random.default_rng(seed).uniform(0, 2 * np.pi, hi - lo + 1))
    x = np.fft.irfft(spec, rate)
    return np.rint(np.tile(x * rms / np.sqrt(np.mean(x**2)), 2)).astype(np.int16)


def stream(proc: Callable[[np.ndarray], np.ndarray], x: np.ndarray, frame: int) -> np.ndarray:
    return np.concatenate([proc(x[i : i + frame]) for i in range(0, len(x), frame)])


def up(x: np.ndarray) -> np.ndarray:
    return stream(Upsampler3().process, x, 160)


def down(x: np.ndarray) -> np.ndarray:
    return stream(Downsampler3().process, x, 480)


def period2(y: np.ndarray, rate: int) -> np.ndarray:
    return y[rate : 2 * rate].astype(np.float64)


def db(ratio: float) -> float:
    return float(10 * np.log10(ratio)) if ratio > 0 else float("-inf")


def delay_s(x: np.ndarray, y: np.ndarray) -> float:
    k = np.arange(300, 3401)
    phase = np.unwrap(np.angle(np.fft.rfft(y)[k] / np.fft.rfft(x)[k]))
    return float(-np.polyfit(2 * np.pi * k, phase, 1)[0])


def gains_db(x: np.ndarray, rx: int, y: np.ndarray, ry: int, freqs: list[int]) -> np.ndarray:
    gx = np.abs(np.fft.rfft(period2(x, rx))[freqs]) / rx
    gy = np.abs(np.fft.rfft(period2(y, ry))[freqs]) / ry
    return np.asarray(20 * np.log10(gy / gx))


def multitone(freqs: list[int], rate: int, amp: float = 2000.0) -> np.ndarray:
    n = np.arange(2 * rate)
    ph = np.random.default_rng(0).uniform(0, 2 * np.pi, len(freqs))
    x = sum(amp * np.sin(2 * np.pi * f * n / rate + p) for f, p in zip(freqs, ph, strict=True))
    return np.rint(x).astype(np.int16)


def snr_db(ref: np.ndarray, out: np.ndarray) -> float:
    n = min(len(ref), len(out))
    r, o = ref[2400 : n - 2400].astype(np.float64), out[2400 : n - 2400].astype(np.float64)
    g = np.dot(o, r) / np.dot(r, r)
    return db(float(np.sum((g * r) ** 2) / np.sum((o - g * r) ** 2)))


def best_lag(ref: np.ndarray, out: np.ndarray) -> int:
    r = ref[:-300].astype(np.float64)
    return max(range(200), key=lambda lag: float(np.dot(out[lag : lag + len(r)].astype(np.float64), r)))


def bench_quality() -> dict[str, Any]:
    progress("measuring image/alias rejection and passband")
    q: dict[str, Any] = {}
    for f in (1000, 3400):
        p = np.abs(np.fft.rfft(period2(up(tone(f, LO)), HI))) ** 2
        q[f"img_{f}"] = db(p[4001:].sum() / p[f])
    for f in (5000, 7000, 9000, 11000):
        x = tone(f, HI)
        q[f"alias_{f}"] = db(np.mean(period2(down(x), LO) ** 2) / np.mean(period2(x, HI) ** 2))
    x = band_noise(HI, 6000, 11000)
    q["noise_6_11k"] = db(np.mean(period2(down(x), LO) ** 2) / np.mean(period2(x, HI) ** 2))
    x = band_noise(HI, 300, 3400)
    q["inband_gain"] = db(np.mean(period2(down(x), LO) ** 2) / np.mean(period2(x, HI) ** 2))
    freqs = [300, 500, 700, 1000, 1500, 2000, 2500, 3000, 3200, 3400]
    m8, m24 = multitone(freqs, LO), multitone(freqs, HI)
    for name, g in (
        ("in", gains_db(m8, LO, up(m8), HI, freqs)),
        ("out", gains_db(m24, HI, down(m24), LO, freqs)),
    ):
        q[f"{name}_spread"] = float(g.max() - g.min())
        q[f"{name}_3400"], q[f"{name}_300"] = float(g[-1]), float(g[0])

    progress("measuring round-trip SNR on synthetic speech")
    s = synth_speech(10_000, HI, seed=3).astype(np.float64)
    spec = np.fft.rfft(s)
    fr = np.fft.rfftfreq(len(s), 1 / HI)
    spec[(fr < 300) | (fr > 3400)] = 0
    x = np.fft.irfft(spec, len(s))
    # -20.6 dBFS RMS, the level of the speech in docs/audio.md §4
    x = np.rint(x * 32767 * 10 ** (-20.6 / 20) / np.sqrt(np.mean(x**2))).astype(np.int16)
    lin = up(down(np.concatenate([x, np.zeros(300, dtype=np.int16)])))
    lag = best_lag(x, lin)
    q["snr_resample_only"] = snr_db(x, lin[lag:])
    oc, ic = OutboundConverter("pcm24k"), InboundConverter("pcm24k")
    pcm = x.tobytes()
    ul = b"".join(oc.convert(pcm[i : i + 960]) for i in range(0, len(pcm), 960)) + oc.flush()
    back = np.frombuffer(b"".join(ic.convert(ul[i : i + 160]) for i in range(0, len(ul), 160)), "<i2")
    lag_mu = best_lag(x, back)
    q["snr_mulaw"] = snr_db(x, back[lag_mu:])
    q["round_trip_delay_ms"] = lag_mu / HI * 1e3
    return q


# --- latency and click check ------------------------------------------------------------------


def added_latency(counts: list[int], rate: int, tau: float) -> tuple[float, float]:
    """Mean/max over output samples of (emitting call - call whose input frame holds the content)."""
    call = np.repeat(np.arange(len(counts)), counts)
    content = np.arange(len(call)) / rate - tau
    ok = content >= 0
    frame = np.floor(content[ok] / 0.02 + 1e-9)
    added = (call[ok] - frame) * 20.0
    return float(added.mean()), float(added.max())


def bench_latency() -> dict[str, Any]:
    progress("measuring latency and streaming identity")
    lat: dict[str, Any] = {}
    x8, x24 = band_noise(LO, 300, 3400), band_noise(HI, 300, 3400)
    lat["in_content_ms"] = delay_s(period2(x8, LO), period2(up(x8), HI)) * 1e3
    lat["out_content_ms"] = delay_s(period2(x24, HI), period2(down(x24), LO)) * 1e3
    ic, oc, framer = InboundConverter("pcm24k"), OutboundConverter("pcm24k"), Framer()
    ul, pcm = ulaw_encode(x8), x24.tobytes()
    in_counts = [len(ic.convert(ul[i : i + 160])) // 2 for i in range(0, len(ul), 160)]
    out_counts = [len(b"".join(framer.push(oc.convert(pcm[i : i + 960])))) for i in range(0, len(pcm), 960)]
    for name, counts, rate in (("in", in_counts, HI), ("out", out_counts, LO)):
        mean, mx = added_latency(counts, rate, lat[f"{name}_content_ms"] / 1e3)
        lat[f"{name}_added_mean_ms"], lat[f"{name}_added_max_ms"] = mean, mx
        lat[f"{name}_pct_calls_without_output"] = 100.0 * sum(c == 0 for c in counts) / len(counts)

    s8, s24 = tone(1000, LO), tone(1000, HI)
    one_in = np.frombuffer(InboundConverter("pcm24k").convert(ulaw_encode(s8)), "<i2")
    u8 = ulaw_encode(s8)
    conv = InboundConverter("pcm24k")
    st_in = np.frombuffer(b"".join(conv.convert(u8[i : i + 160]) for i in range(0, len(u8), 160)), "<i2")
    one_out = ulaw_decode(OutboundConverter("pcm24k").convert(s24.tobytes()))
    b24 = s24.tobytes()
    conv_o = OutboundConverter("pcm24k")
    st_out = ulaw_decode(b"".join(conv_o.convert(b24[i : i + 960]) for i in range(0, len(b24), 960)))
    rng = np.random.default_rng(0)
    conv_o, parts, i = OutboundConverter("pcm24k"), [], 0
    while i < len(b24):
        k = 2 * int(rng.integers(1, 4801))
        parts.append(conv_o.convert(b24[i : i + k]))
        i += k
    st_rand = ulaw_decode(b"".join(parts))
    lat["click_in_frames_lsb"] = int(np.max(np.abs(st_in.astype(int) - one_in)))
    lat["click_out_frames_lsb"] = int(np.max(np.abs(st_out.astype(int) - one_out)))
    lat["click_out_random_lsb"] = int(np.max(np.abs(st_rand.astype(int) - one_out)))
    return lat


# --- report -----------------------------------------------------------------------------------


def fmt_db(v: float) -> str:
    return "<-90" if v < -90 else f"{v:.1f}"


QUALITY_HEADER = ["img 1 kHz", "img 3.4 kHz", "alias 5k", "alias 7k", "alias 9k", "alias 11k"]
QUALITY_HEADER += ["noise 6-11k", "noise 0.3-3.4k gain"]


def table(title: str, header: list[str], cells: list[str]) -> list[str]:
    """One Markdown table with the project's converters as its single row."""
    return [
        title,
        "",
        "| " + " | ".join(["implementation", *header]) + " |",
        "|---|" + "---:|" * len(header),
        "| " + " | ".join([ROW, *cells]) + " |",
        "",
    ]


def report(cpu: dict[str, Any], q: dict[str, Any], lat: dict[str, Any]) -> str:
    stats = ("median_us", "p99_us", "mean_cpu_us")
    io = [f"{cpu[d][k]:.1f}" for d in ("in", "out") for k in stats]
    codec = [f"{cpu[op][k]:.2f}" for op in ("decode", "encode") for k in stats]
    keys = ["img_1000", "img_3400", "alias_5000", "alias_7000", "alias_9000", "alias_11000", "noise_6_11k"]
    flat = [f"{q[f'{d}_{k}']:.3f}" for d in ("in", "out") for k in ("spread", "3400", "300")]
    latency = [
        f"{lat[f'{d}_{k}']:{fmt}}"
        for d in ("in", "out")
        for k, fmt in (("content_ms", ".2f"), ("added_mean_ms", ".2f"), ("added_max_ms", ".1f"))
    ]
    latency.insert(3, f"{lat['in_pct_calls_without_output']:.0f}")
    latency.append(f"{lat['out_pct_calls_without_output']:.0f}")
    lines = [
        *table(
            "## 1. CPU per 20 ms frame (outbound includes Framer.push)",
            [f"{d} {k}" for d in ("in", "out") for k in ("median µs", "p99 µs", "mean CPU µs")]
            + ["out CPU µs per 20 ms, fed 200 ms deltas", "calls/core (DSP only, from means)"],
            [*io, f"{cpu['out_200ms_per_20ms_cpu_us']:.1f}", f"{cpu['calls_per_core']:,.0f}"],
        ),
        *table(
            "mu-law codec alone, 160 samples (median / p99 / mean CPU µs):",
            [f"{op} {k}" for op in ("decode", "encode") for k in ("median", "p99", "mean CPU")],
            codec,
        ),
        *table(
            "## 2. Quality (image/alias in dB relative to the tone; lower is better)",
            QUALITY_HEADER,
            [fmt_db(q[k]) for k in keys] + [f"{q['inband_gain']:.2f}"],
        ),
        *table(
            "Passband (dB):",
            ["in spread", "in @3.4k", "in @300", "out spread", "out @3.4k", "out @300"],
            flat,
        ),
        *table(
            "Round-trip SNR (dB), band-limited synthetic speech at -20.6 dBFS RMS:",
            ["resample only", "with mu-law", "round-trip delay ms"],
            [f"{q['snr_resample_only']:.1f}", f"{q['snr_mulaw']:.1f}", f"{q['round_trip_delay_ms']:.2f}"],
        ),
        *table(
            "## 3. Latency added by the converter (ms; 20 ms frames)",
            [
                f"{d}: {k}"
                for d in ("in", "out")
                for k in ("content delay", "added mean", "added max", "% calls w/o output")
            ],
            latency,
        ),
        *table(
            "## 4. Streaming vs one block (1 kHz sine, max difference in LSB)",
            ["in, 20 ms frames", "out, 20 ms frames", "out, random deltas 1-4800 samples"],
            [str(lat[k]) for k in ("click_in_frames_lsb", "click_out_frames_lsb", "click_out_random_lsb")],
        ),
    ]
    return "\n".join(lines).rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--calls", type=int, default=20_000, help="timed calls per direction")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as in docs/audio.md §4
    started = time.perf_counter()
    cpu = bench_cpu(args.calls)
    q = bench_quality()
    lat = bench_latency()
    progress(f"done in {time.perf_counter() - started:.1f} s")
    print(report(cpu, q, lat))
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu, "quality": q, "latency": lat}, indent=2) + "\n")


if __name__ == "__main__":
    main()
