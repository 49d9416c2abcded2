"""`callbot phone`: a softphone that calls a running callbot server the way Twilio would.

It places the call with the simulated Twilio caller (`callbot.sim.caller.TwilioCaller`): the
signed voice webhook, the TwiML's <Connect><Stream>, the signed media websocket, then Media
Streams exactly as Twilio speaks it (mu-law 8 kHz in 20 ms frames, marks echoed after playback,
`clear` honoured). So everything the server does on a real call runs, against a local or a
remote server.

Two ways to talk:

* live: the microphone is the caller and the speaker plays the assistant (sounddevice, optional:
  `pip install "callbot[phone]"`). Talking over the assistant interrupts it, as on a phone.
  Ctrl-C hangs up.
* file: `--input caller.wav` (any rate and channel count) is cut into utterances at silences
  and said one by one, each followed by waiting for the reply (or by `--pause-ms` of silence,
  which talks over a reply still playing); `--script FILE` spells the call out line by line.

`--output call.wav` records the call in stereo (caller left, assistant right). With the admin
login (`--admin-user/--admin-password`, or CALLBOT_ADMIN_USER/CALLBOT_ADMIN_PASSWORD), the
transcript and in-call summaries are shown as the server saves them, from the ticket JSON API,
and the ticket id is printed at hang-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import httpx
import numpy as np

from callbot.core.ticket import context_change_text
from callbot.phone_audio import AudioDeviceError, LiveAudio, list_devices, load_sounddevice, parse_device
from callbot.sim.caller import (
    CallResult,
    Dtmf,
    HangUp,
    Live,
    Say,
    SayDuringAssistant,
    Silence,
    Step,
    TwilioCaller,
    WaitForAssistant,
    speech_intervals,
)
from callbot.sim.wavio import read_wav, resample_to

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_FROM = "+15551230000"
DEFAULT_TO = "+15559870000"
PHONE_RATE = 8000
SPLIT_GAP_MS = 700
"""Silences at least this long split `--input` into utterances."""
WAIT_TIMEOUT_S = 30.0
FILE_MODE_MAX_S = 600.0
LIVE_MODE_MAX_S = 4 * 3600.0
POLL_INTERVAL_S = 0.5
TICKET_WAIT_S = 30.0
"""After hang-up, how long to wait for the server to finish the ticket (final transcript, summary)."""

SCRIPT_HELP = """\
script file: one command per line; blank lines and comments (from a # at the start of a line
or after a space) are ignored; FILE is a WAV (any rate or channel count), relative to the
script's folder:
  say FILE          say the recording
  barge MS FILE     say it MS ms after the assistant starts speaking (talk over it)
  pause MS          stay silent for MS ms
  wait [SECONDS]    stay silent until the assistant has spoken and finished (default 30 s)
  dtmf DIGITS       press keys, written together (0-9 * # A-D: dtmf 12#)
  hangup            hang up (the end of the script hangs up too)"""


class ScriptError(ValueError):
    """The call plan cannot be built (a bad script line, an unreadable WAV)."""


# ----- file mode: the call plan -----


def load_wav_8k(path: Path) -> np.ndarray:
    """A WAV of any rate and channel count as mono int16 at 8 kHz."""
    try:
        pcm, rate = read_wav(path)
    except (OSError, ValueError, EOFError) as exc:
        raise ScriptError(f"cannot read {path}: {exc}") from exc
    return resample_to(pcm, rate, PHONE_RATE)


def split_utterances(pcm8k: np.ndarray, gap_ms: int = SPLIT_GAP_MS) -> list[np.ndarray]:
    """Cut a recording at silences of `gap_ms` or more; each piece keeps a little quiet around it.

    "Silence" is relative to the recording: 20 ms frames more than 30 dB below its loudest one
    (and below an absolute floor), so a quiet recording splits as well as a loud one. A recording
    without any speech comes back whole.
    """
    frame = PHONE_RATE * 20 // 1000
    count = len(pcm8k) // frame
    if count == 0:
        return [pcm8k] if len(pcm8k) else []
    frames = np.asarray(pcm8k[: count * frame], dtype=np.float64).reshape(count, frame)
    loudest = float(np.sqrt(np.mean(frames**2, axis=1)).max())
    threshold = max(60.0, loudest * 10 ** (-30 / 20))
    intervals = speech_intervals(pcm8k, threshold, min_gap_ms=gap_ms, rate=PHONE_RATE)
    if not intervals:
        return [pcm8k]
    pieces = []
    for start_ms, end_ms in intervals:
        start = max(0, (start_ms - 100) * PHONE_RATE // 1000)
        end = min(len(pcm8k), (end_ms + 200) * PHONE_RATE // 1000)
        pieces.append(pcm8k[start:end])
    return pieces


def input_steps(pcm8k: np.ndarray, label: str, pause_ms: int | None) -> list[Step]:
    """The call plan for `--input`.

    Without a pause: wait for the greeting, then each utterance followed by waiting for the
    reply. With `pause_ms`: `pause_ms` of silence before each utterance instead of waiting, so
    an utterance starts while the assistant may still be talking (a barge-in) when the pause is
    shorter than its reply; the last reply is waited for.
    """
    utterances = split_utterances(pcm8k)
    steps: list[Step] = [] if pause_ms is not None else [WaitForAssistant(timeout_s=WAIT_TIMEOUT_S)]
    for n, pcm in enumerate(utterances, start=1):
        name = f"{label} ({n}/{len(utterances)})" if len(utterances) > 1 else label
        if pause_ms is not None:
            steps.append(Silence(pause_ms))
            steps.append(Say(pcm, label=name))
        else:
            steps.append(Say(pcm, label=name))
            steps.append(WaitForAssistant(timeout_s=WAIT_TIMEOUT_S))
    if pause_ms is not None:
        steps.append(WaitForAssistant(timeout_s=WAIT_TIMEOUT_S))
    steps.append(HangUp())
    return steps


def _int_arg(text: str, what: str, line_no: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ScriptError(f"line {line_no}: {what} must be a whole number of ms, not {text!r}") from None
    if value < 0:
        raise ScriptError(f"line {line_no}: {what} must not be negative")
    return value


_COMMENT = re.compile(r"(^|\s)#.*$")
"""A comment starts with # at the start of a line or after a space (so `dtmf 12#` is digits)."""


def parse_script(text: str, base_dir: Path) -> list[Step]:
    """Steps from a script file's text (see SCRIPT_HELP); the call hangs up at the end."""
    steps: list[Step] = []
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = _COMMENT.sub("", raw).strip()
        if not line:
            continue
        command, _, rest = line.partition(" ")
        command, rest = command.lower(), rest.strip()
        if command == "say":
            if not rest:
                raise ScriptError(f"line {line_no}: say needs a WAV file")
            steps.append(Say(load_wav_8k(base_dir / rest), label=rest))
        elif command == "barge":
            after, _, name = rest.partition(" ")
            if not name.strip():
                raise ScriptError(f"line {line_no}: barge needs MS and a WAV file")
            after_ms = _int_arg(after, "barge's delay", line_no)
            pcm = load_wav_8k(base_dir / name.strip())
            steps.append(
                SayDuringAssistant(pcm, after_ms=after_ms, timeout_s=WAIT_TIMEOUT_S, label=name.strip())
            )
        elif command == "pause":
            steps.append(Silence(_int_arg(rest, "pause", line_no)))
        elif command == "wait":
            try:
                timeout = float(rest) if rest else WAIT_TIMEOUT_S
            except ValueError:
                raise ScriptError(f"line {line_no}: wait takes seconds, not {rest!r}") from None
            steps.append(WaitForAssistant(timeout_s=timeout))
        elif command == "dtmf":
            try:
                steps.extend(Dtmf(digit) for digit in rest.replace(" ", ""))
            except ValueError as exc:
                raise ScriptError(f"line {line_no}: {exc}") from None
            if not rest:
                raise ScriptError(f"line {line_no}: dtmf needs digits")
        elif command == "hangup":
            steps.append(HangUp())
            break
        else:
            known = "say, barge, pause, wait, dtmf, hangup"
            raise ScriptError(f"line {line_no}: unknown command {command!r} ({known})")
    if not steps or not isinstance(steps[-1], HangUp):
        steps.append(HangUp())
    return steps


# ----- what the terminal shows -----


class Console:
    """Timestamped lines, plus (on a terminal) a status line with the running call duration."""

    def __init__(self, out: TextIO, *, status_line: bool | None = None) -> None:
        self.out = out
        self.status_line = out.isatty() if status_line is None else status_line
        self.started = time.monotonic()
        self.call_start: float | None = None
        self._status_shown = False

    def elapsed(self) -> float:
        return time.monotonic() - (self.call_start if self.call_start is not None else self.started)

    def call_connected(self) -> None:
        self.call_start = time.monotonic()

    def line(self, text: str) -> None:
        self._wipe_status()
        print(f"[{self.elapsed():6.1f}s] {text}", file=self.out, flush=True)

    def plain(self, text: str) -> None:
        self._wipe_status()
        print(text, file=self.out, flush=True)

    def _wipe_status(self) -> None:
        if self._status_shown:
            self.out.write("\r\033[K")
            self._status_shown = False

    def show_status(self, hint: str) -> None:
        if not self.status_line or self.call_start is None:
            return
        minutes, seconds = divmod(int(self.elapsed()), 60)
        self.out.write(f"\r\033[K  on call {minutes:02d}:{seconds:02d}  {hint}")
        self.out.flush()
        self._status_shown = True

    async def status_loop(self, hint: str) -> None:
        while True:
            self.show_status(hint)
            await asyncio.sleep(0.5)

    def done(self) -> None:
        self._wipe_status()


class CallEvents:
    """The caller's `on_event` hook: the call's progress as lines on the console."""

    def __init__(self, console: Console, *, quiet_assistant: bool) -> None:
        self.console = console
        self.quiet_assistant = quiet_assistant

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        say = self.console.line
        if kind == "webhook":
            say(f"ringing: POST {data.get('url')} -> HTTP {data.get('status')}")
        elif kind == "start":
            self.console.call_connected()
            say(f"connected: media stream {data.get('stream_sid')} ({data.get('stream_url')})")
        elif kind == "step" and data.get("label"):
            if data.get("step") == "SayDuringAssistant":
                say(f"you (waiting to talk over the assistant): {data['label']}")
            elif data.get("step") == "Live":
                say(f"{data['label']}")
            else:
                say(f"you say: {data['label']}")
        elif kind == "barge_in":
            say(f"you talk over the assistant: {data.get('label') or ''}".rstrip(": "))
        elif kind == "wait_timeout":
            say(f"no reply in time ({data.get('step')}); carrying on")
        elif kind == "dtmf":
            say(f"you press {data.get('digit')}")
        elif kind == "clear":
            say("barge-in: the server cleared the assistant's audio")
        elif kind == "assistant_audio_start" and not self.quiet_assistant:
            say("assistant speaking ...")
        elif kind == "violation":
            say(f"protocol problem: {data.get('text')}")
        elif kind == "max_call_reached":
            say("--duration reached: hanging up")
        elif kind == "hangup":
            say("you hung up")
        elif kind == "server_closed":
            say(f"the server ended the call (close code {data.get('code')})")
        elif kind == "error":
            say(f"error: {data.get('error')}")


ROLE_NAMES = {"user": "caller", "assistant": "assistant", "system": "system"}


@dataclass
class TranscriptWatcher:
    """Shows the call's ticket as the server saves it (after every turn): new lines, summaries.

    Reads `/api/tickets?call_sid=...` once to find the ticket, then `/api/tickets/{id}`.
    Transient failures are retried quietly; a refused login or a server without the review API
    turns the live transcript off with one line saying so.
    """

    client: httpx.AsyncClient
    call_sid: str
    console: Console
    interval_s: float = POLL_INTERVAL_S
    ticket_id: int | None = None
    status: str | None = None
    title: str | None = None
    enabled: bool = True
    printed: set[str] = field(default_factory=set)
    summaries: set[str] = field(default_factory=set)
    _unreachable: bool = field(default=False, init=False)

    def off(self, why: str) -> None:
        if self.enabled:
            self.enabled = False
            self.console.line(f"live transcript off: {why}")

    async def run(self) -> None:
        while self.enabled:
            await self.poll()
            await asyncio.sleep(self.interval_s)

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Any | None:
        try:
            response = await self.client.get(path, params=params)
        except httpx.HTTPError as exc:
            if not self._unreachable:
                self._unreachable = True
                self.console.line(f"live transcript: ticket API unreachable for now ({type(exc).__name__})")
            return None
        self._unreachable = False
        if response.status_code == 401:
            self.off("the server refused the admin login (check --admin-user/--admin-password)")
            return None
        if response.status_code == 404 and self.ticket_id is None:
            self.off("the server's ticket API is off (set CALLBOT_ADMIN_PASSWORD on the server)")
            return None
        if response.status_code != 200:
            return None  # 503 while the database is down, 404 for a moment: try again later
        try:
            return response.json()
        except ValueError:
            return None

    async def poll(self) -> None:
        """One look at the ticket; prints whatever is new."""
        if not self.enabled:
            return
        if self.ticket_id is None:
            page = await self._get("/api/tickets", {"call_sid": self.call_sid, "page_size": "20"})
            items = page.get("items", []) if isinstance(page, dict) else []
            # A server without the call_sid filter ignores it: match the sid here as well.
            mine = [i for i in items if isinstance(i, dict) and i.get("call_sid") == self.call_sid]
            if not mine:
                return
            self.ticket_id = int(mine[0]["id"])
            self.console.line(f"ticket #{self.ticket_id} opened for this call")
        ticket = await self._get(f"/api/tickets/{self.ticket_id}")
        if isinstance(ticket, dict):
            self.show(ticket, final=False)

    def show(self, ticket: dict[str, Any], *, final: bool) -> None:
        self.status = ticket.get("status")
        self.title = ticket.get("title")
        entries = [e for e in ticket.get("transcript") or [] if isinstance(e, dict)]
        usage = ticket.get("usage") or {}
        responses_done = int(usage.get("responses") or 0)
        replies = sum(1 for e in entries if e.get("role") == "assistant")
        for index, entry in enumerate(entries):
            item_id = str(entry.get("item_id"))
            if item_id in self.printed:
                continue
            text = entry.get("text")
            # Saved mid-reply, the newest assistant line may still be growing: it is finished once
            # something follows it, it was interrupted, or every reply so far has its response.done.
            settled = (
                final
                or entry.get("role") != "assistant"
                or index < len(entries) - 1
                or bool(entry.get("interrupted"))
                or responses_done >= replies
            )
            if not settled or (text is None and entry.get("status") != "failed" and not final):
                continue  # still being spoken, or its transcript is on its way
            self.printed.add(item_id)
            role = str(entry.get("role"))
            who = ROLE_NAMES.get(role, role)
            flag = ""
            if entry.get("interrupted"):
                heard = entry.get("heard_ms")
                flag = f" [interrupted after {heard / 1000:.1f} s]" if heard is not None else " [interrupted]"
            self.console.line(f"{who}: {text if text is not None else '(no transcript)'}{flag}")
        for summary in ticket.get("in_call_summaries") or []:
            summary_id = str(summary.get("summary_id"))
            if summary_id in self.summaries:
                continue
            self.summaries.add(summary_id)
            after = summary.get("tokens_after")
            change = context_change_text(
                int(summary.get("tokens_before") or 0), after if isinstance(after, int) else None
            )
            self.console.line(
                f"summary inserted at {summary.get('at_ms', 0) / 1000:.1f}s of the call: folded "
                f"{summary.get('turns_folded')} turns, {change}"
            )

    async def finish(self, wait_s: float = TICKET_WAIT_S) -> None:
        """After hang-up: follow the ticket until the server has completed it (or `wait_s` passes)."""
        deadline = time.monotonic() + wait_s
        announced = False
        while self.enabled and time.monotonic() < deadline:
            await self.poll()
            if self.status == "complete":
                break
            if self.status == "pending_summary" and not announced:
                announced = True
                self.console.line("waiting for the ticket's summary ...")
            await asyncio.sleep(self.interval_s)
        if self.enabled and self.ticket_id is not None:
            ticket = await self._get(f"/api/tickets/{self.ticket_id}")
            if isinstance(ticket, dict):
                self.show(ticket, final=True)


# ----- the command -----


@dataclass
class PhoneOptions:
    url: str = DEFAULT_URL
    input: Path | None = None
    script: Path | None = None
    output: Path | None = None
    pause_ms: int | None = None
    auth_token: str | None = None
    public_url: str | None = None
    from_number: str = DEFAULT_FROM
    to_number: str = DEFAULT_TO
    input_device: int | str | None = None
    output_device: int | str | None = None
    list_devices: bool = False
    duration_s: float | None = None
    admin_user: str = "admin"
    admin_password: str | None = None
    speed: float = 1.0
    ticket_wait_s: float = TICKET_WAIT_S

    @property
    def file_mode(self) -> bool:
        return self.input is not None or self.script is not None

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> PhoneOptions:
        env = os.environ if environ is None else environ
        return cls(
            url=args.url.rstrip("/"),
            input=args.input,
            script=args.script,
            output=args.output,
            pause_ms=args.pause_ms,
            auth_token=args.auth_token if args.auth_token is not None else env.get("TWILIO_AUTH_TOKEN"),
            public_url=args.public_url or env.get("CALLBOT_PUBLIC_URL") or None,
            from_number=args.from_number,
            to_number=args.to_number,
            input_device=parse_device(args.input_device),
            output_device=parse_device(args.output_device),
            list_devices=args.list_devices,
            duration_s=args.duration,
            admin_user=args.admin_user or env.get("CALLBOT_ADMIN_USER") or "admin",
            admin_password=args.admin_password or env.get("CALLBOT_ADMIN_PASSWORD") or None,
            speed=args.speed,
        )


def build_steps(options: PhoneOptions) -> list[Step]:
    """The file-mode call plan from `--script` or `--input`."""
    if options.script is not None:
        try:
            text = options.script.read_text(encoding="utf-8")
        except OSError as exc:
            raise ScriptError(f"cannot read {options.script}: {exc}") from exc
        return parse_script(text, options.script.parent)
    assert options.input is not None
    return input_steps(load_wav_8k(options.input), options.input.name, options.pause_ms)


def _explain_failure(result: CallResult, options: PhoneOptions) -> str:
    if result.outcome == "webhook_error" and result.http_status == 403:
        return (
            "the server refused the webhook (HTTP 403, bad signature): pass the server's "
            "TWILIO_AUTH_TOKEN (--auth-token) and CALLBOT_PUBLIC_URL (--public-url)"
        )
    if result.outcome == "no_stream":
        return f"the server answered without connecting a stream: {result.error}"
    if result.outcome == "ws_rejected":
        return f"{result.error} (is --public-url the server's CALLBOT_PUBLIC_URL?)"
    if result.outcome == "error" and result.http_status is None:
        return f"cannot reach {options.url}: {result.error}"
    return result.error or result.outcome


async def run_phone(
    options: PhoneOptions,
    out: TextIO | None = None,
    err: TextIO | None = None,
    *,
    sounddevice_loader: Callable[[], Any] = load_sounddevice,
) -> int:
    """Place one call; 0 when it connected and ended normally, 1 when it failed, 2 for bad input.

    `sounddevice_loader` returns the sounddevice module (tests pass a fake one).
    """
    out = out or sys.stdout
    err = err or sys.stderr
    if options.list_devices:
        try:
            list_devices(sounddevice_loader(), out)
        except AudioDeviceError as exc:
            print(f"callbot phone: {exc}", file=err)
            return 2
        return 0
    if options.input is not None and options.script is not None:
        print("callbot phone: use either --input or --script, not both", file=err)
        return 2
    if options.pause_ms is not None and options.input is None:
        print("callbot phone: --pause-ms goes with --input", file=err)
        return 2
    audio: LiveAudio | None = None
    try:
        if options.file_mode:
            steps = build_steps(options)
        else:
            audio = LiveAudio(sounddevice_loader(), options.input_device, options.output_device)
            steps = [Live(audio.mic, label="live: talk now (Ctrl-C hangs up)"), HangUp()]
    except (ScriptError, AudioDeviceError) as exc:
        print(f"callbot phone: {exc}", file=err)
        return 2
    console = Console(out)
    try:
        if audio is not None:
            audio.start()
            console.plain(f"callbot phone: {audio.describe()}")
            console.plain("  (use a headset: from loudspeakers the assistant hears itself and stops talking)")
        return await _call(options, steps, audio, console)
    except AudioDeviceError as exc:
        console.done()
        print(f"callbot phone: {exc}", file=err)
        return 2
    finally:
        if audio is not None:
            audio.close()


async def _call(options: PhoneOptions, steps: list[Step], audio: LiveAudio | None, console: Console) -> int:
    public = options.public_url.rstrip("/") if options.public_url else None
    caller = TwilioCaller(
        options.url,
        auth_token=options.auth_token,
        from_number=options.from_number,
        to_number=options.to_number,
        speed=options.speed,
        max_call_s=options.duration_s or (FILE_MODE_MAX_S if audio is None else LIVE_MODE_MAX_S),
        public_base_url=public if public and public != options.url else None,
        audio_sink=audio.speaker if audio is not None else None,
    )
    transcript_on = options.admin_password is not None
    caller.on_event = CallEvents(console, quiet_assistant=transcript_on)
    console.plain(f"callbot phone: calling {options.url} from {options.from_number} to {options.to_number}")
    if options.auth_token is None:
        console.plain("  no --auth-token / TWILIO_AUTH_TOKEN: the webhook goes unsigned")
    if not transcript_on:
        console.plain(
            "  live transcript is off: pass --admin-password (or CALLBOT_ADMIN_PASSWORD) to follow the ticket"
        )
    auth = httpx.BasicAuth(options.admin_user, options.admin_password or "")
    async with httpx.AsyncClient(base_url=options.url, auth=auth, timeout=5.0, trust_env=False) as client:
        watcher = TranscriptWatcher(client, caller.call_sid, console, enabled=transcript_on)
        background = [asyncio.create_task(watcher.run(), name="phone-transcript")]
        if audio is not None:
            status = console.status_loop("Ctrl-C hangs up")
            background.append(asyncio.create_task(status, name="phone-status"))
        with _hang_up_on_ctrl_c(audio, console):
            try:
                result = await caller.run(steps)
            finally:
                for task in background:
                    task.cancel()
                await asyncio.gather(*background, return_exceptions=True)
                console.done()
        if not result.connected:
            console.line(f"call failed: {_explain_failure(result, options)}")
            return 1
        who = {"caller": "you hung up", "server": "the server hung up"}.get(result.closed_by or "", "")
        console.line(f"call ended after {result.duration_s:.1f} s ({who or result.outcome})")
        if audio is not None:
            console.line(audio.health())
        if result.violations:
            console.line(f"{len(result.violations)} protocol problem(s) seen from the server (listed above)")
        if options.output is not None:
            result.write_wav(options.output)
            console.line(f"recording written to {options.output} (caller left, assistant right)")
        if transcript_on:
            await watcher.finish(options.ticket_wait_s)
        _report_ticket(console, watcher, caller.call_sid, transcript_on)
    return 0 if result.outcome == "completed" and result.error is None else 1


def _report_ticket(console: Console, watcher: TranscriptWatcher, call_sid: str, transcript_on: bool) -> None:
    if watcher.ticket_id is not None:
        title = f": {watcher.title}" if watcher.title else ""
        console.line(f"ticket #{watcher.ticket_id} ({watcher.status}){title}")
        ticket_id = watcher.ticket_id
        console.plain(f"  see it with: callbot tickets show {ticket_id}  (or /tickets/{ticket_id})")
    elif transcript_on and watcher.enabled:
        console.line(f"no ticket found for call {call_sid} yet")
    else:
        console.line(f"call {call_sid}: the ticket id needs the admin login (--admin-password)")


@contextlib.contextmanager
def _hang_up_on_ctrl_c(audio: LiveAudio | None, console: Console) -> Any:
    """In live mode the first Ctrl-C hangs up properly (Twilio `stop`); a second one aborts."""
    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    if audio is None or main_task is None:
        yield
        return

    def on_sigint() -> None:
        if audio.mic.stopped:
            main_task.cancel()
            return
        console.line("hanging up ... (Ctrl-C again to abort)")
        audio.mic.stop()

    try:
        loop.add_signal_handler(signal.SIGINT, on_sigint)
    except (NotImplementedError, RuntimeError, ValueError):  # Windows, or not the main thread
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def add_parser(sub: Any) -> None:
    """Register `callbot phone` on the CLI's subparsers."""
    phone = sub.add_parser(
        "phone",
        help="call a running callbot server like Twilio would (microphone/speaker, or WAV files)",
        description=(
            "A softphone for testing: makes the signed webhook request Twilio would, follows the TwiML "
            "to the media websocket and speaks Media Streams like Twilio. Without --input/--script it "
            "uses the microphone and speaker (pip install 'callbot[phone]')."
        ),
        epilog=SCRIPT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure_parser(phone)


def configure_parser(phone: argparse.ArgumentParser) -> None:
    phone.add_argument("url", nargs="?", default=DEFAULT_URL, help=f"the server (default {DEFAULT_URL})")
    files = phone.add_argument_group("file mode (headless)")
    files.add_argument(
        "--input", type=Path, help="WAV the caller says (any rate/channels), split at silences"
    )
    files.add_argument(
        "--pause-ms",
        type=int,
        metavar="N",
        help="with --input: N ms of silence before each utterance instead of waiting for the reply "
        "(shorter than a reply = talking over it)",
    )
    files.add_argument("--script", type=Path, help="a call script (see below)")
    phone.add_argument(
        "--output", type=Path, help="record the call: stereo WAV, caller left, assistant right"
    )
    phone.add_argument("--duration", type=float, metavar="S", help="hang up after S seconds")
    twilio = phone.add_argument_group("as Twilio")
    twilio.add_argument("--auth-token", help="signs the webhook (default: env TWILIO_AUTH_TOKEN)")
    twilio.add_argument(
        "--public-url",
        help="the URL Twilio would sign, the server's CALLBOT_PUBLIC_URL (default: that env, or URL)",
    )
    twilio.add_argument("--from", dest="from_number", default=DEFAULT_FROM, help="caller number")
    twilio.add_argument("--to", dest="to_number", default=DEFAULT_TO, help="called number")
    live = phone.add_argument_group("live mode (microphone and speaker)")
    live.add_argument("--input-device", help="microphone: index or name (see --list-devices)")
    live.add_argument("--output-device", help="speaker: index or name")
    live.add_argument("--list-devices", action="store_true", help="list audio devices and exit")
    review = phone.add_argument_group("live transcript (the server's ticket API)")
    review.add_argument("--admin-user", help="default: env CALLBOT_ADMIN_USER or admin")
    review.add_argument(
        "--admin-password", help="default: env CALLBOT_ADMIN_PASSWORD; without it no transcript"
    )
    phone.add_argument("--speed", type=float, default=1.0, help=argparse.SUPPRESS)
    phone.set_defaults(func=cmd_phone)


def cmd_phone(args: argparse.Namespace) -> int:
    options = PhoneOptions.from_args(args)
    if options.speed <= 0:
        print("callbot phone: --speed must be positive", file=sys.stderr)
        return 2
    if options.speed != 1.0 and not options.file_mode:
        print("callbot phone: --speed works in file mode only", file=sys.stderr)
        return 2
    return asyncio.run(run_phone(options))


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m callbot.phone ...`: the same command without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="callbot phone", epilog=SCRIPT_HELP)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    configure_parser(parser)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
