"""The `callbot phone` command: its options and arguments, and placing the call.

`run_phone` checks the options, builds the call plan (file mode) or opens the sound devices
(live mode), places the call with the simulated Twilio caller and reports how it went; the exit
code says which: 0 completed, 1 failed, 2 bad input or an audio device problem.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import httpx

from callbot.caller.simulator import CallResult, HangUp, Live, Step, TwilioCaller
from callbot.phone.console import CallEvents, Console
from callbot.phone.devices import AudioDeviceError, LiveAudio, list_devices, load_sounddevice, parse_device
from callbot.phone.script import SCRIPT_HELP, ScriptError, input_steps, load_wav_8k, parse_script
from callbot.phone.transcript import TICKET_WAIT_S, TranscriptWatcher

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_FROM = "+15551230000"
DEFAULT_TO = "+15559870000"
FILE_MODE_MAX_S = 600.0
LIVE_MODE_MAX_S = 4 * 3600.0


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
