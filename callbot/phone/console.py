"""What `callbot phone` shows on the terminal: timestamped lines, the call's progress, a status line."""

from __future__ import annotations

import asyncio
import time
from typing import Any, TextIO


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
