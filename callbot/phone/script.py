"""File mode's call plan: the `--script` language, and `--input` cut into utterances.

Both build the list of simulated-caller steps (`callbot.caller.simulator`) that `callbot phone` plays
instead of a microphone. A bad line or an unreadable WAV is a `ScriptError` with a message that
names the line; the command turns it into exit code 2.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from callbot.caller.simulator import (
    Dtmf,
    HangUp,
    Say,
    SayDuringAssistant,
    Silence,
    Step,
    WaitForAssistant,
    speech_intervals,
)
from callbot.caller.wavio import read_wav, resample_to
from callbot.errors import LocalError

PHONE_RATE = 8000
SPLIT_GAP_MS = 700
"""Silences at least this long split `--input` into utterances."""
WAIT_TIMEOUT_S = 30.0

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


class ScriptError(LocalError, ValueError):
    """The call plan cannot be built (a bad script line, an unreadable WAV)."""


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
