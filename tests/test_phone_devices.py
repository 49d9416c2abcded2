"""`callbot phone` live mode: sounddevice loading, device selection and errors, the mic/speaker
buffers, and whole live calls against the real server.

Most tests inject a fake `sounddevice` module (no sound hardware in CI). One test uses the real
sounddevice/PortAudio when they are installed, and one runs the command as a subprocess through
PortAudio -> ALSA -> PulseAudio null sinks when `pulseaudio` is installed: a real microphone and
speaker path, with no sound card.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import os
import re
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import numpy as np
import pytest

from callbot.caller.script import ScriptCursor
from callbot.caller.simulator import HangUp, Live, speech_intervals
from callbot.caller.wavio import resample_to
from callbot.phone import PhoneOptions, run_phone
from callbot.phone.console import Console
from callbot.phone.devices import (
    AudioDeviceError,
    LiveAudio,
    MicSource,
    SpeakerSink,
    StreamResampler,
    list_devices,
    load_sounddevice,
    parse_device,
)
from callbot.testing.fake_realtime import Script
from callbot.testing.speech import synth_speech
from tests.e2e_helpers import AUTH_TOKEN, PUBLIC_URL
from tests.test_phone import ADMIN_PASSWORD, phone_rig, read_stereo, transcript_lines

T = TypeVar("T")

# ----- a fake sounddevice -----


class FakePortAudioError(Exception):
    pass


class FakeStream:
    """Like sounddevice's Input/OutputStream with a callback: a thread calls it every `block` frames."""

    def __init__(self, sd: FakeSoundDevice, kind: str, **kwargs: Any) -> None:
        self.sd, self.kind, self.kwargs = sd, kind, kwargs
        self.started = self.closed = False
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        if sd.fail_open == kind:
            raise FakePortAudioError(
                f"Error opening {kind.title()}Stream: Device unavailable [PaErrorCode -9985]"
            )
        sd.streams.append(self)

    def start(self) -> None:
        self.started = True
        if self.sd.run_threads:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def _run(self) -> None:
        rate = self.kwargs["samplerate"]
        block = rate // 50  # 20 ms, like a sound card's period
        callback = self.kwargs["callback"]
        t0, n = time.monotonic(), 0
        while not self._stop.is_set():
            if self.kind == "input":
                start = n * block
                chunk = self.sd.mic_signal[start : start + block]
                chunk = np.concatenate([chunk, np.zeros(block - len(chunk), np.int16)])
                callback(chunk.reshape(-1, 1), block, None, None)
            else:
                out = np.zeros((block, 1), dtype=np.int16)
                callback(out, block, None, None)
                self.sd.speaker_out.append(out[:, 0].copy())
            n += 1
            delay = t0 + n * block / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def close(self) -> None:
        self.stop()
        self.closed = True


class FakeSoundDevice(ModuleType):
    """The parts of sounddevice that callbot.phone.devices uses, with devices a test describes."""

    PortAudioError = FakePortAudioError

    def __init__(
        self, devices: list[dict[str, Any]] | None = None, default: tuple[int, int] = (0, 0)
    ) -> None:
        super().__init__("sounddevice")
        self.devices = devices if devices is not None else [device("USB headset", 1, 1, 44100.0)]
        self.default = default
        self.streams: list[FakeStream] = []
        self.fail_open: str | None = None
        self.run_threads = False
        self.mic_signal = np.zeros(0, dtype=np.int16)
        self.speaker_out: list[np.ndarray] = []

    def query_devices(self, device: int | str | None = None, kind: str | None = None) -> Any:
        if device is None and kind is None:
            return self.devices
        if device is None:
            index = self.default[0 if kind == "input" else 1]
            if index < 0 or index >= len(self.devices):
                raise FakePortAudioError(f"Error querying device {index}")
            return self.devices[index]
        if isinstance(device, int):
            if device >= len(self.devices):
                raise FakePortAudioError(f"Error querying device {device}")
            return self.devices[device]
        matches = [d for d in self.devices if device.lower() in d["name"].lower()]
        if not matches:
            raise ValueError(f"No {kind} device matching {device!r}")
        return matches[0]

    def InputStream(self, **kwargs: Any) -> FakeStream:
        return FakeStream(self, "input", **kwargs)

    def OutputStream(self, **kwargs: Any) -> FakeStream:
        return FakeStream(self, "output", **kwargs)


def device(name: str, inputs: int, outputs: int, rate: float) -> dict[str, Any]:
    return {
        "name": name,
        "max_input_channels": inputs,
        "max_output_channels": outputs,
        "default_samplerate": rate,
    }


def importer_raising(exc: BaseException) -> Callable[[str], ModuleType]:
    def import_module(name: str) -> ModuleType:
        assert name == "sounddevice"
        raise exc

    return import_module


# ----- loading sounddevice and choosing devices -----


def test_missing_sounddevice_or_portaudio_is_one_clear_line() -> None:
    with pytest.raises(AudioDeviceError, match=r'pip install "callbot\[phone\]"'):
        load_sounddevice(importer_raising(ModuleNotFoundError("No module named 'sounddevice'")))
    with pytest.raises(
        AudioDeviceError, match=r"PortAudio library is missing .*apt-get install libportaudio2"
    ):
        load_sounddevice(importer_raising(OSError("PortAudio library not found")))
    fake = FakeSoundDevice()
    assert load_sounddevice(lambda name: fake) is fake


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (
            ModuleNotFoundError("No module named 'sounddevice'"),
            'live mode needs sounddevice: pip install "callbot[phone]"',
        ),
        (
            OSError("PortAudio library not found"),
            "the PortAudio library is missing (PortAudio library not found)",
        ),
    ],
)
async def test_live_mode_without_audio_stack_exits_2(raised: BaseException, expected: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = await run_phone(
        PhoneOptions(url="http://127.0.0.1:9"),
        out=out,
        err=err,
        sounddevice_loader=lambda: load_sounddevice(importer_raising(raised)),
    )
    assert code == 2
    assert err.getvalue().startswith(f"callbot phone: {expected}")
    assert len(err.getvalue().splitlines()) == 1
    assert out.getvalue() == ""  # no call was placed


def test_device_selection_and_errors() -> None:
    assert parse_device(None) is None and parse_device(" ") is None
    assert parse_device("3") == 3 and parse_device("USB mic") == "USB mic"
    sd = FakeSoundDevice(
        [
            device("Built-in mic", 2, 0, 48000.0),
            device("Speakers", 0, 2, 44100.0),
            device("Headset", 1, 1, 16000.0),
        ],
        default=(0, 1),
    )
    audio = LiveAudio(sd, None, None)
    assert (audio.mic.device_rate, audio.speaker.device_rate) == (48000, 44100)
    assert audio.describe() == "microphone: Built-in mic (48000 Hz); speaker: Speakers (44100 Hz)"
    inp, outp = sd.streams
    assert inp.kind == "input" and inp.kwargs["channels"] == 1 and inp.kwargs["dtype"] == "int16"
    assert inp.kwargs["samplerate"] == 48000 and inp.kwargs["device"] is None
    assert outp.kwargs["samplerate"] == 44100 and outp.kwargs["callback"] == audio.speaker.callback
    with audio:
        assert inp.started and outp.started
    assert inp.closed and outp.closed

    audio = LiveAudio(sd, "head", 2)  # a name substring and an index
    assert (audio.mic.device_rate, audio.speaker.device_rate) == (16000, 16000)
    assert sd.streams[-2].kwargs["device"] == "head" and sd.streams[-1].kwargs["device"] == 2

    with pytest.raises(
        AudioDeviceError, match="no usable input device 'nope': No input device matching 'nope'"
    ):
        LiveAudio(sd, "nope", None)
    with pytest.raises(AudioDeviceError, match=r"input device 1 \(Speakers\) has no input channels"):
        LiveAudio(sd, 1, None)
    with pytest.raises(AudioDeviceError, match="no usable output device 7: Error querying device 7"):
        LiveAudio(sd, None, 7)
    no_defaults = FakeSoundDevice(default=(-1, -1))
    with pytest.raises(
        AudioDeviceError,
        match=r"no usable default input: Error querying device -1 "
        r"\(no default input device; see --list-devices\)",
    ):
        LiveAudio(no_defaults, None, None)

    failing = FakeSoundDevice()
    failing.fail_open = "output"
    with pytest.raises(AudioDeviceError, match="cannot open the audio devices: Error opening OutputStream"):
        LiveAudio(failing, None, None)
    assert [s.closed for s in failing.streams] == [True]  # the microphone opened first is closed again


async def test_list_devices_and_device_errors_exit_2() -> None:
    out = io.StringIO()
    list_devices(FakeSoundDevice(), out)
    assert "USB headset" in out.getvalue()
    with pytest.raises(AudioDeviceError, match="PortAudio found no audio devices"):
        list_devices(FakeSoundDevice([]), io.StringIO())

    out, err = io.StringIO(), io.StringIO()
    sd = FakeSoundDevice()
    assert (
        await run_phone(PhoneOptions(list_devices=True), out=out, err=err, sounddevice_loader=lambda: sd) == 0
    )
    assert "USB headset" in out.getvalue()
    err = io.StringIO()
    options = PhoneOptions(url="http://127.0.0.1:9", input_device="missing")
    assert await run_phone(options, out=io.StringIO(), err=err, sounddevice_loader=lambda: sd) == 2
    assert err.getvalue() == (
        "callbot phone: no usable input device 'missing': No input device matching 'missing'\n"
    )
    err = io.StringIO()
    code = await run_phone(
        PhoneOptions(list_devices=True),
        out=io.StringIO(),
        err=err,
        sounddevice_loader=lambda: FakeSoundDevice([]),
    )
    assert code == 2 and "no audio devices" in err.getvalue()


def test_real_sounddevice_reports_a_missing_device_clearly() -> None:
    """With the real library (when sounddevice and PortAudio are installed here)."""
    try:
        sd = load_sounddevice()
    except AudioDeviceError as exc:
        pytest.skip(f"no sounddevice/PortAudio here: {exc}")
    with pytest.raises(AudioDeviceError, match="no usable input device 'no-such-device-callbot'"):
        LiveAudio(sd, "no-such-device-callbot", None)


# ----- the buffers between the call's clock and the sound card's -----


def test_stream_resampler_matches_the_offline_resampler_for_any_chunking() -> None:
    rng = np.random.default_rng(7)
    x = (rng.standard_normal(12000) * 4000).astype(np.int16)
    for rate_in, rate_out in [(44100, 8000), (8000, 44100), (48000, 8000), (8000, 16000), (8000, 8000)]:
        resampler = StreamResampler(rate_in, rate_out)
        pieces, pos = [], 0
        while pos < len(x):
            size = int(rng.integers(1, 900))
            pieces.append(resampler.process(x[pos : pos + size]))
            pos += size
        streamed = np.concatenate(pieces)
        reference = resample_to(x, rate_in, rate_out)
        assert len(reference) - len(streamed) <= math.ceil(resampler.half * rate_out / rate_in) + 1
        np.testing.assert_array_equal(streamed, reference[: len(streamed)])


def test_mic_source_primes_converts_and_bounds_its_delay() -> None:
    mic = MicSource(48000, prime_ms=40, max_ms=200)
    tone = (8000 * np.sin(2 * np.pi * 300 * np.arange(48000) / 48000)).astype(np.int16)
    assert np.all(mic.read_frame() == 0)  # nothing captured yet: silence, not a stall
    mic.callback(tone[:960].reshape(-1, 1), 960, None, None)  # 20 ms: less than the priming margin
    assert np.all(mic.read_frame() == 0)
    mic.callback(tone[960:4800].reshape(-1, 1), 3840, None, None)  # now 100 ms
    frame = mic.read_frame()
    assert frame is not None and frame.shape == (160,) and frame.dtype == np.int16
    assert 4000 < np.abs(frame).max() <= 8200  # the tone, at 8 kHz
    mic.callback(tone[4800:].reshape(-1, 1), 43200, None, "input overflow")  # a burst of 0.9 s
    mic.read_frame()
    assert mic.dropped_ms > 500 and mic.device_errors == 1  # kept ~40 ms, not a growing delay
    for _ in range(5):
        mic.read_frame()
    assert mic.underruns >= 1  # ran dry: silence until primed again
    mic.stop()
    assert mic.stopped and mic.read_frame() is None


def test_speaker_sink_primes_plays_and_drops_when_behind() -> None:
    speaker = SpeakerSink(16000, prime_ms=60, max_ms=250)
    out = np.zeros((320, 1), dtype=np.int16)
    speaker.play_frame(np.full(160, 5000, dtype=np.int16))
    speaker.callback(out, 320, None, None)
    assert np.all(out == 0)  # still priming (20 ms < 60 ms)
    for _ in range(3):
        speaker.play_frame(np.full(160, 5000, dtype=np.int16))
    speaker.callback(out, 320, None, None)
    assert np.abs(out[100:, 0]).min() > 4000  # the tone, at 16 kHz
    flat = np.zeros(320, dtype=np.int16)
    speaker.callback(flat, 320, None, None)  # a 1-D buffer works too
    for _ in range(30):  # 600 ms arrive while the device is not pulling
        speaker.play_frame(np.full(160, 5000, dtype=np.int16))
    assert speaker.dropped_ms > 300
    for _ in range(20):
        speaker.callback(out, 320, None, None)
    assert speaker.underruns >= 1


# ----- a whole live call with the fake sound card -----


async def test_live_call_with_fake_sound_card(tmp_path: Path) -> None:
    sd = FakeSoundDevice([device("Fake headset", 1, 1, 44100.0)])
    sd.run_threads = True
    speech = synth_speech(1200, 8000, seed=11)
    # The "microphone" hears 2.5 s of silence, the caller speaking, then silence.
    sd.mic_signal = resample_to(np.concatenate([np.zeros(20000, np.int16), speech]), 8000, 44100)
    script = Script(
        greeting="Hello, how can I help?", user_transcripts=["My router is broken."], replies=["I see."]
    )
    out = io.StringIO()
    async with phone_rig(tmp_path, script) as rig:
        options = rig.options(duration_s=6.0, output=tmp_path / "live.wav")
        code = await run_phone(options, out=out, sounddevice_loader=lambda: sd)
    text = out.getvalue()
    assert code == 0, text
    assert "microphone: Fake headset (44100 Hz); speaker: Fake headset (44100 Hz)" in text
    assert "live: talk now (Ctrl-C hangs up)" in text
    assert "--duration reached: hanging up" in text
    assert transcript_lines(text) == [
        "assistant: Hello, how can I help?",
        "caller: My router is broken.",
        "assistant: I see.",
    ]
    assert re.search(r"ticket #\d+ \(complete\)", text)
    assert all(stream.closed for stream in sd.streams)
    audio = read_stereo(tmp_path / "live.wav")
    caller = speech_intervals(audio[:, 0], min_gap_ms=300)
    # The microphone, at 8 kHz: 2.5 s after the sound card started, which was just before the call.
    assert len(caller) == 1 and 1700 <= caller[0][0] <= 2600, caller
    # What the server sent was played to the fake speaker, not only recorded.
    played = np.concatenate(sd.speaker_out)
    assert len(speech_intervals(played, rate=44100, min_gap_ms=300)) >= 2  # greeting and reply


# ----- the real thing: PortAudio through ALSA into PulseAudio null sinks -----


def _pulse_tools() -> str | None:
    """Why the PulseAudio test cannot run here, or None when it can."""
    for tool in ("pulseaudio", "pacat", "parec"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    try:
        load_sounddevice()
    except AudioDeviceError as exc:
        return str(exc)
    if not Path("/usr/share/alsa/alsa.conf.d/pulse.conf").exists():
        return "the ALSA PulseAudio plugin (libasound2-plugins) is not installed"
    return None


@contextlib.asynccontextmanager
async def pulse_server(root: Path) -> AsyncIterator[dict[str, str]]:
    """A private PulseAudio daemon with two null sinks: `phone_mic` (what the caller says) and
    `phone_speaker` (what the phone plays); yields the environment a client needs."""
    runtime = root / "runtime"
    runtime.mkdir(mode=0o700, parents=True)
    socket = root / "native"
    env = {
        **os.environ,
        "HOME": str(root),
        "XDG_RUNTIME_DIR": str(runtime),
        "XDG_CONFIG_HOME": str(root / "config"),
        "PULSE_SERVER": f"unix:{socket}",
    }
    env.pop("PULSE_SINK", None)
    env.pop("PULSE_SOURCE", None)
    # Its log goes to a file: a pipe nobody reads fills up (pulseaudio complains on a loaded
    # machine), and a daemon blocked on its stderr stalls every client, which hung CI once.
    log_path = root / "pulseaudio.log"
    log_file = log_path.open("wb")
    daemon = await asyncio.create_subprocess_exec(
        "pulseaudio",
        "-n",
        "--daemonize=no",
        "--exit-idle-time=-1",
        "--use-pid-file=no",
        "--disable-shm=yes",
        f"--load=module-native-protocol-unix auth-anonymous=1 socket={socket}",
        "--load=module-null-sink sink_name=phone_mic",
        "--load=module-null-sink sink_name=phone_speaker",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log_file,
    )
    log_file.close()  # the daemon has its own copy
    try:
        for _ in range(100):
            if socket.exists():
                break
            if daemon.returncode is not None:
                break
            await asyncio.sleep(0.05)
        if not socket.exists():
            pytest.skip(f"pulseaudio did not start: {log_path.read_text(errors='replace')[-300:]}")
        yield env
    finally:
        if daemon.returncode is None:
            daemon.terminate()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(daemon.wait(), 5)
            if daemon.returncode is None:
                daemon.kill()
                await daemon.wait()


@pytest.mark.skipif(_pulse_tools() is not None, reason=str(_pulse_tools()))
async def test_live_call_through_portaudio_and_pulseaudio_null_sinks(tmp_path: Path) -> None:
    speech = synth_speech(1400, 8000, seed=12)
    # On a loaded CI machine this has hung now and then until pytest-timeout, whose dump showed no
    # coroutine; the cause is not found. So a hang is cut off and named (a warning, which the run's
    # summary shows even when it passes) and the call runs once more on a fresh sound server and
    # app; a second hang fails the test with both places.
    first = tmp_path / "first"
    first.mkdir()
    try:
        attempt, result = first, await _within(90, _live_call(first, speech))
    except Hung as hung:
        warnings.warn(f"the live PulseAudio call hung; running it again. {hung}", stacklevel=1)
        attempt = tmp_path / "second"
        attempt.mkdir()
        try:
            result = await _within(75, _live_call(attempt, speech))
        except Hung as again:
            pytest.fail(f"the live PulseAudio call hung twice.\nfirst: {hung}\nsecond: {again}")
    text, stderr, returncode, heard = result
    assert returncode == 0, text + stderr
    assert "speaker: pulse" in text and "hanging up" in text and "(you hung up)" in text
    lines = transcript_lines(text)
    assert lines == ["assistant: Hello, how can I help?", "caller: It works through a sound server.",
                     "assistant: Great."], text  # fmt: skip
    assert re.search(r"ticket #\d+ \(complete\)", text)
    audio = read_stereo(attempt / "live.wav")
    assert len(speech_intervals(audio[:, 0], min_gap_ms=300)) >= 1  # the microphone reached the call
    assert len(speech_intervals(audio[:, 1], min_gap_ms=300)) >= 2  # greeting and reply played
    # ... and came out of the speaker device. (Only "some": in the container this was written in,
    # PortAudio's ALSA -> PulseAudio path pulls at about half speed, so the speaker buffer drops
    # audio to keep its delay bounded, and parec loses what it buffered when it is killed.)
    assert len(speech_intervals(heard, min_gap_ms=300)) >= 1
    assert re.search(r"audio: microphone \d+ underruns, .* speaker \d+ underruns", text)


class Hung(Exception):
    """`_within` gave up; the message says where the work was waiting."""


async def _within(seconds: float, work: Coroutine[Any, Any, T]) -> T:
    """`work`'s result, or `Hung` after `seconds`, saying where it was waiting: the chain of awaits
    it was stuck in, then the line each other pending task was at."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        others = [t for t in asyncio.all_tasks() if t is not task and t is not asyncio.current_task()]
        where = [_await_chain(task.get_coro())]
        where += [f"{t.get_name()}: {_await_chain(t.get_coro())}" for t in others]
        task.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(task, 10)
        raise Hung(f"no result after {seconds} s; it was waiting at:\n" + "\n".join(where))
    return task.result()


def _await_chain(coro: Any) -> str:
    """file:line of each coroutine in the chain `coro` awaits through: the innermost first, and
    after each `<-` the one that awaits it."""
    steps = []
    while coro is not None:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is not None:
            steps.append(f"{frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
    return " <- ".join(reversed(steps)) or repr(coro)


async def _live_call(tmp_path: Path, speech: np.ndarray) -> tuple[str, str, int | None, np.ndarray]:
    """A call from `callbot.phone` on PulseAudio null sinks: its stdout and stderr, its exit code,
    and what came out of its speaker."""
    script = Script(greeting="Hello, how can I help?", user_transcripts=["It works through a sound server."],
                    replies=["Great."])  # fmt: skip
    raw_speech = resample_to(speech, 8000, 44100).astype("<i2").tobytes()
    talk: asyncio.subprocess.Process | None = None
    async with pulse_server(tmp_path / "pulse") as env, phone_rig(tmp_path, script) as rig:
        env = {**env, "PULSE_SOURCE": "phone_mic.monitor", "PULSE_SINK": "phone_speaker"}
        listen = await asyncio.create_subprocess_exec(  # what comes out of the phone's speaker
            "parec", "--device=phone_speaker.monitor", "--format=s16le", "--rate=8000", "--channels=1",
            env=env, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        phone = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "callbot.phone", rig.base_url,
            "--input-device", "pulse", "--output-device", "pulse",
            "--auth-token", AUTH_TOKEN, "--public-url", PUBLIC_URL,
            "--admin-password", ADMIN_PASSWORD, "--output", str(tmp_path / "live.wav"),
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await asyncio.sleep(3.0)  # the greeting plays
            talk = await asyncio.create_subprocess_exec(  # the caller speaks into the "microphone"
                "pacat", "--playback", "--device=phone_mic", "--format=s16le", "--rate=44100", "--channels=1",
                env=env, stdin=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert talk.stdin is not None
            talk.stdin.write(raw_speech + bytes(44100))  # speech, then half a second of silence
            await asyncio.wait_for(talk.stdin.drain(), 20)
            talk.stdin.close()
            await asyncio.wait_for(talk.wait(), 10)
            await asyncio.sleep(3.0)  # the reply plays
            phone.send_signal(signal.SIGINT)  # Ctrl-C hangs up properly
            stdout, stderr = await asyncio.wait_for(phone.communicate(), 40)
        finally:
            for process in (phone, listen, talk):
                if process is not None and process.returncode is None:
                    process.kill()
                    await asyncio.wait_for(process.wait(), 10)
        assert listen.stdout is not None
        heard = np.frombuffer(await asyncio.wait_for(listen.stdout.read(), 10), dtype="<i2")
    return stdout.decode(), stderr.decode(), phone.returncode, heard


# ----- the caller-side extension points and the terminal -----


def test_live_step_reads_its_source_each_tick_until_none() -> None:
    frames = [np.full(160, 1000, np.int16), np.full(100, 2000, np.int16), np.full(200, 3000, np.int16)]

    class Source:
        def read_frame(self) -> np.ndarray | None:
            return frames.pop(0) if frames else None

    cursor = ScriptCursor([Live(Source(), label="mic"), HangUp()])
    first = cursor.advance(0, False, True)
    assert first.notes[0][1]["label"] == "mic" and first.frame is not None and first.frame[0] == 1000
    padded = cursor.advance(1, False, True).frame
    assert padded is not None and padded.shape == (160,) and padded[99] == 2000 and padded[100] == 0
    cut = cursor.advance(2, False, True).frame
    assert cut is not None and cut.shape == (160,) and np.all(cut == 3000)
    last = cursor.advance(3, False, True)
    assert last.frame is None and last.hangup


def test_console_status_line_shows_the_call_duration() -> None:
    out = io.StringIO()
    console = Console(out, status_line=True)
    console.show_status("Ctrl-C hangs up")
    assert out.getvalue() == ""  # not connected yet
    console.call_connected()
    console.show_status("Ctrl-C hangs up")
    assert out.getvalue().endswith("\r\x1b[K  on call 00:00  Ctrl-C hangs up")
    console.line("caller: hi")
    assert out.getvalue().endswith("\r\x1b[K[   0.0s] caller: hi\n")  # the status line is wiped first
    assert Console(io.StringIO()).status_line is False  # not a terminal: plain lines only
