"""The demo's voices speak words (eSpeak NG from the `speech` extra): speech-like spectra, turns the
fake VAD cuts where the sentences are, and the synthetic tones where eSpeak NG is missing."""

from __future__ import annotations

import numpy as np
import pytest

from callbot.demo import CALLER_LINES, caller_audio
from callbot.testing import tts
from callbot.testing.fake_realtime_audio import PCM24K, PCMU, AudioFormat, EnergyVad
from callbot.testing.speech import synth_speech
from tests.speech_measure import spectra

needs_tts = pytest.mark.skipif(
    not tts.available(), reason="the speech extra (espeakng-loader) is not installed"
)


@needs_tts
def test_the_callers_lines_have_speech_spectra_and_a_tone_or_the_buzz_do_not() -> None:
    speech = np.concatenate([tts.speak(line, 8000) for line in CALLER_LINES])  # type: ignore[misc]
    measured = spectra(speech)
    assert measured.speech_like(), measured
    t = np.arange(8000 * 5) / 8000
    tone = spectra((10000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16))
    assert not tone.speech_like() and tone.distinct_peaks == 1
    buzz = spectra(np.concatenate([synth_speech(2500, 8000, seed=100 + k) for k in range(7)]))
    assert not buzz.speech_like(), buzz  # the measure tells words from the old buzz


@needs_tts
def test_the_two_voices_differ_and_the_level_is_set() -> None:
    line = "Thank you for calling."
    caller = tts.speak(line, 8000, voice=tts.CALLER_VOICE)
    assistant = tts.speak(line, 8000, voice=tts.ASSISTANT_VOICE)
    assert caller is not None and assistant is not None
    assert abs(int(np.max(np.abs(caller))) - 32767 * 10 ** (tts.PEAK_DBFS / 20)) < 2
    assert spectra(caller).centroid_std_hz > 0 and not np.array_equal(caller[:4000], assistant[:4000])
    # a second says about two words: the length follows the text
    assert 0.8 < len(caller) / 8000 < 2.5


def vad_turns(fmt: AudioFormat, utterances: list[np.ndarray], gap_ms: int = 1500) -> tuple[list, list]:
    """Feed the utterances with gaps through the fake's VAD in 20 ms appends, as the bridge does.

    Returns the VAD's (start, stop) pairs and where each utterance's sound really was."""
    rate = fmt.rate
    vad = EnergyVad(rate, threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500, base_ms=0.0)
    pieces, truth, at = [], [], 0
    for audio in utterances:
        pieces.append(np.zeros(rate * gap_ms // 1000, dtype=np.int16))
        at += gap_ms
        loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > 1000)
        truth.append((at + loud[0] * 1000 // rate, at + loud[-1] * 1000 // rate))
        pieces.append(audio)
        at += len(audio) * 1000 // rate
    pieces.append(np.zeros(rate * gap_ms // 1000, dtype=np.int16))
    stream = fmt.encode(np.concatenate(pieces))
    step = fmt.nbytes(20)
    events = [e for i in range(0, len(stream), step) for e in vad.feed_audio(fmt, stream[i : i + step])]
    starts = [ms for kind, ms in events if kind == "start"]
    stops = [ms for kind, ms in events if kind == "stop"]
    return list(zip(starts, stops, strict=True)), truth


@needs_tts
@pytest.mark.parametrize("fmt", [PCM24K, PCMU], ids=["pcm24k", "pcmu"])
def test_the_fake_vad_cuts_one_turn_per_spoken_sentence(fmt: AudioFormat) -> None:
    turns, truth = vad_turns(fmt, [tts.speak(line, fmt.rate) for line in CALLER_LINES])  # type: ignore[misc]
    assert len(turns) == len(CALLER_LINES), (turns, truth)  # no sentence split, none merged
    for (start, stop), (onset, offset) in zip(turns, truth, strict=True):
        # the start is the onset less the 300 ms prefix padding (a quiet first consonant may
        # be found a little later); the stop is where the sound ended
        assert onset - 320 <= start <= onset - 150, (start, onset)
        assert abs(stop - offset) <= 120, (stop, offset)


def test_without_espeak_the_demo_keeps_its_tones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tts, "_engine", lambda: None)
    tts._spoken.cache_clear()
    try:
        assert not tts.available()
        assert tts.speak("hello", 8000) is None
        audio = caller_audio(CALLER_LINES[0], 0)
        assert np.array_equal(audio, synth_speech(2500, 8000, seed=100))
    finally:
        tts._spoken.cache_clear()


def test_resampling_keeps_a_tone_and_its_length() -> None:
    t = np.arange(22050) / 22050
    tone = (8000 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
    out = tts.resample(tone, 22050, 8000)
    assert len(out) == 8000
    spectrum = np.abs(np.fft.rfft(out.astype(float)))
    assert abs(np.argmax(spectrum) - 300) <= 1  # 1 Hz bins over one second
