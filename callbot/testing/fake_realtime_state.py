"""Script, session configuration, the server-side conversation and the per-session core.

Kept apart from the networking code so the rules that tests depend on — which reply text is
chosen, how the session config merges, how items are ordered and how tokens are counted — can
be read in one place. `SessionCore` is the state one session's parts share (the session's wire
and input audio, its item events, its responder), declared here once.
"""

from __future__ import annotations

import base64
import copy
import math
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from callbot.testing.fake_realtime_audio import PCM24K, AudioFormat
from callbot.testing.tts import ASSISTANT_VOICE, speak

USER_AUDIO_TOKENS_PER_S = 10
"""1 token per 100 ms of caller audio (OpenAI cost guide)."""
ASSISTANT_AUDIO_TOKENS_PER_S = 20
"""1 token per 50 ms of assistant audio (OpenAI cost guide)."""

DEFAULT_INSTRUCTIONS = (
    "You are a helpful, witty, and friendly AI. Act like a human, but remember that you aren't a human. "
    "Your voice and personality should be warm and engaging. Talk quickly."
)


@dataclass(frozen=True)
class ScriptedCall:
    """A function call the fake 'model' makes at the end of a reply (after speaking `say`)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    say: str = ""
    """Speech in the same response, before the call ("Let me look that up.")."""
    raw_arguments: str | None = None
    """Sent as the call's `arguments` text instead of `arguments` as JSON: a model's malformed or
    adversarial arguments (not JSON, not an object, lone surrogates, deep nesting)."""


@dataclass(frozen=True)
class ScriptedMcpCall:
    """A remote MCP tool call the fake 'model' makes at the start of a reply: OpenAI would call
    the server; the fake takes the answer from here, then speaks about it in the same response."""

    server_label: str
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    output: str | None = None
    """What the MCP server answered (the `mcp_call` item's `output`), unless `error` is set."""
    error: dict[str, Any] | None = None
    """The call failed: one of the SDK's three error shapes, `{"type": "protocol_error", "code",
    "message"}`, `{"type": "tool_execution_error", "message"}` or `{"type": "http_error", "code",
    "message"}`; the call ends with `response.mcp_call.failed`."""
    say: str = "Here is what I found: {output}"
    """The spoken answer after a completed call; `{output}` is replaced by the output."""
    say_on_error: str = "Sorry, that did not work: {error}"
    """The spoken answer after a failed call; `{error}` is replaced by the error's message."""

    def spoken(self) -> str:
        if self.error is not None:
            return self.say_on_error.replace("{error}", str(self.error.get("message") or ""))
        return self.say.replace("{output}", self.output or "")


@dataclass
class Script:
    """What the fake 'model' says and hears.

    * `greeting`: spoken for the first client `response.create` carrying `instructions` (or any
      response before the caller has said something).
    * `user_transcripts[n]`: transcript of the n-th committed user utterance (0-based); beyond
      the list, `"Utterance <n+1>."`.
    * `replies[n]`: text of the n-th non-greeting in-conversation response; beyond the list,
      `"You said: <transcript of the last user item>"`.
    * `out_of_band_reply`: text of `conversation:"none"` responses; None builds
      `"Summary: ..."` from the text of the items in the response's context.
    * `transcript_after_response`: hold input transcription events until the `response.done` of
      the response that the utterance triggered (real servers often do this).
    * `fail_transcription_for`: utterance indices whose transcription emits `.failed` instead.
    * `realtime_factor`: how much faster than real time audio deltas are paced; 0 = no pacing.
    * `delta_ms`: audio per `response.output_audio.delta`.
    * `first_delta_delay_ms`: wall-clock delay before the first delta (model latency), unscaled.
    * `function_calls[n]`: reply n says `say` and then calls a function (a second output item of
      type `function_call`); only a tool declared in the session can be called.
    * `after_tool`: what the response after a `function_call_output` says, with `{output}`
      replaced by that output, so a test can hear that the agent read the answer back; it does
      not use up a reply.
    * `cancelled_calls_complete`: a cancelled response's function call item still says
      `completed` (only `response.done`'s status tells it was cut short), the harder case.
    * `speak_words`: the assistant speaks words (TTS) rather than the synthetic buzz.
    * `mcp_tools[label]`: the tools the MCP server with that `server_label` lists (each
      `{"name", "input_schema", "description"?, "annotations"?}`) when a `session.update`
      declares it; a label not in here lists no tools. `mcp_list_fails`: labels whose listing
      fails (`mcp_list_tools.failed`).
    * `mcp_calls[n]`: reply n first calls a tool of a remote MCP server (an `mcp_call` output
      item, run "by OpenAI" with the scripted output or error), then says `ScriptedMcpCall.say`
      (or `.say_on_error`) in the same response. Only a tool the session's listing of that
      server holds can be called; otherwise the reply says `no_tool_reply` and calls nothing.
    """

    greeting: str = "Hello! Thanks for calling. How can I help you today?"
    user_transcripts: list[str] = field(
        default_factory=lambda: [
            "I'd like to book an appointment.",
            "Friday afternoon works.",
            "Thank you, bye.",
        ]
    )
    replies: list[str] = field(default_factory=list)
    transcript_after_response: bool = False
    fail_transcription_for: set[int] = field(default_factory=set)
    realtime_factor: float = 4.0
    delta_ms: int = 100
    first_delta_delay_ms: float = 0.0
    out_of_band_reply: str | None = None
    function_calls: dict[int, ScriptedCall] = field(default_factory=dict)
    after_tool: str = "Here is what I found: {output}"
    cancelled_calls_complete: bool = False
    speak_words: bool = False
    """Say the greeting and replies in words through eSpeak NG where it is installed
    (callbot/testing/tts.py), instead of the synthetic buzz; the length then follows the speech."""
    mcp_tools: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    mcp_list_fails: set[str] = field(default_factory=set)
    mcp_calls: dict[int, ScriptedMcpCall] = field(default_factory=dict)
    no_tool_reply: str = "Sorry, I have no tool for that."

    def transcript_for(self, n: int) -> str:
        return self.user_transcripts[n] if n < len(self.user_transcripts) else f"Utterance {n + 1}."


def split_words(text: str, groups: int) -> list[str]:
    """Split `text` into `groups` consecutive pieces at word boundaries; "".join() gives it back.

    Used to spread transcript deltas over audio chunks (some pieces may be empty).
    """
    words = text.split(" ")
    words = [w + " " for w in words[:-1]] + words[-1:]
    pieces = [""] * max(1, groups)
    for j, word in enumerate(words):
        pieces[j * len(pieces) // len(words)] += word
    return pieces


def text_tokens(text: str | None) -> int:
    """~4 characters per token."""
    return math.ceil(len(text) / 4) if text else 0


@dataclass
class SessionContext:
    """What a session shares with its server (one per server, passed to every session)."""

    script: Script
    validate: bool = True
    record_audio: bool = True
    violations: list[str] = field(default_factory=list)
    synth_cache: dict[tuple[str, int, int, int], list[str]] = field(default_factory=dict)

    def synth_chunks(self, fmt: AudioFormat, duration_ms: int, seed: int, delta_ms: int) -> list[str]:
        """Base64 audio chunks of `delta_ms` each, cached because many sessions say the same lines."""
        key = (fmt.type, duration_ms, seed, delta_ms)
        chunks = self.synth_cache.get(key)
        if chunks is None:
            audio = fmt.synth(duration_ms, seed)
            step = fmt.nbytes(delta_ms)
            chunks = [
                base64.b64encode(audio[i : i + step]).decode("ascii") for i in range(0, len(audio), step)
            ]
            if len(self.synth_cache) >= 256:
                self.synth_cache.pop(next(iter(self.synth_cache)))
            self.synth_cache[key] = chunks
        return chunks

    def spoken_chunks(
        self, fmt: AudioFormat, text: str, delta_ms: int
    ) -> tuple[list[str], int, bytes] | None:
        """`text` spoken in words (eSpeak NG) as base64 chunks of `delta_ms`, its length in ms and
        the whole encoded audio; None where no TTS is installed (the caller then synthesises)."""
        samples = speak(text, fmt.rate, voice=ASSISTANT_VOICE)
        if samples is None:
            return None
        audio = fmt.encode(samples)
        step = fmt.nbytes(delta_ms)
        chunks = [base64.b64encode(audio[i : i + step]).decode("ascii") for i in range(0, len(audio), step)]
        return chunks, int(fmt.ms(len(audio))), audio


# ----------------------------------------------------------------------------- session config

SERVER_VAD_DEFAULTS: dict[str, Any] = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "idle_timeout_ms": None,
    "create_response": True,
    "interrupt_response": True,
}
SEMANTIC_VAD_DEFAULTS: dict[str, Any] = {
    "type": "semantic_vad",
    "eagerness": "auto",
    "create_response": True,
    "interrupt_response": True,
}


def default_session(model: str) -> dict[str, Any]:
    """The effective config a fresh session starts with (GA `RealtimeSessionCreateRequest` shape).

    The real `session.created` also carries `id`, `object` and `expires_at`; the SDK's session
    model does not declare them, so the strict validator would flag them and the fake leaves
    them out.
    """
    return {
        "type": "realtime",
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "include": None,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": dict(SERVER_VAD_DEFAULTS),
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "marin", "speed": 1.0},
        },
    }


def _normalize_format(spec: dict[str, Any]) -> dict[str, Any]:
    kind = spec.get("type") or "audio/pcm"
    return {"type": kind, "rate": 24000} if kind == "audio/pcm" else {"type": kind}


def merge_session(config: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Return a new effective config with `update` (a validated `session` object) applied.

    Top-level fields replace; `audio.input.*` / `audio.output.*` merge key by key; objects such
    as `turn_detection` are replaced and filled with server defaults. `model` and `type` never
    change (the model is fixed at connect time).
    """
    merged = copy.deepcopy(config)
    for key, value in update.items():
        if key in ("type", "model"):
            continue
        if key != "audio":
            merged[key] = copy.deepcopy(value)
            continue
        for direction in ("input", "output"):
            for sub, subval in ((value or {}).get(direction) or {}).items():
                target = merged["audio"][direction]
                if sub == "format":
                    target[sub] = _normalize_format(subval or {})
                elif sub == "turn_detection" and subval is not None:
                    defaults = (
                        SEMANTIC_VAD_DEFAULTS if subval.get("type") == "semantic_vad" else SERVER_VAD_DEFAULTS
                    )
                    target[sub] = {**defaults, **{k: v for k, v in subval.items() if v is not None}}
                elif sub == "noise_reduction" and subval is not None:
                    strength = subval.get("strength")
                    target[sub] = {
                        "type": subval.get("type"),
                        "strength": 1.0 if strength is None else strength,
                    }
                else:
                    target[sub] = copy.deepcopy(subval)
    return merged


# ----------------------------------------------------------------------------- conversation


@dataclass(slots=True)
class ConvItem:
    """One server-side conversation item plus what the fake needs to bill and retrieve it.

    `data` is the GA item without audio. Audio is kept as `audio_bytes` for caller audio (may
    be dropped to save memory, duration is kept) and regenerated from `synth_seed` for the
    assistant (deterministic), so hundreds of sessions do not hold megabytes each.
    """

    data: dict[str, Any]
    audio_ms: float = 0.0
    audio_format: AudioFormat | None = None
    audio_bytes: bytes | None = None
    synth_seed: int | None = None
    synth_ms: int = 0
    heard_text: str = ""
    """What the fake 'model' understood from this item (scripted transcript for caller audio)."""

    @property
    def id(self) -> str:
        return str(self.data["id"])

    def tokens(self) -> tuple[int, int]:
        """(text_tokens, audio_tokens) this item adds to a response's input."""
        data = self.data
        text = 0
        for part in data.get("content") or []:
            text += text_tokens(part.get("text"))
            if data.get("role") == "assistant":
                text += text_tokens(part.get("transcript"))
        for key in ("arguments", "output", "name"):
            text += text_tokens(data.get(key))
        if not self.audio_ms:
            return text, 0
        rate = ASSISTANT_AUDIO_TOKENS_PER_S if data.get("role") == "assistant" else USER_AUDIO_TOKENS_PER_S
        return text, math.ceil(self.audio_ms * rate / 1000)

    def with_audio(self) -> dict[str, Any]:
        """The item as `conversation.item.retrieved` shows it: including base64 audio."""
        item = copy.deepcopy(self.data)
        audio = self.audio_bytes
        if audio is None and self.synth_seed is not None and self.audio_format is not None:
            full = self.audio_format.synth(self.synth_ms, self.synth_seed)
            audio = full[: self.audio_format.nbytes(self.audio_ms)]
        if audio is not None:
            for part in item.get("content") or []:
                if part.get("type") in ("input_audio", "output_audio"):
                    part["audio"] = base64.b64encode(audio).decode("ascii")
        return item


class Conversation:
    """Ordered items with the GA insertion rules (append, `"root"`, after a given id)."""

    def __init__(self) -> None:
        self.items: list[ConvItem] = []

    def index(self, item_id: str) -> int:
        for i, item in enumerate(self.items):
            if item.id == item_id:
                return i
        return -1

    def get(self, item_id: str) -> ConvItem | None:
        i = self.index(item_id)
        return self.items[i] if i >= 0 else None

    def last_id(self) -> str | None:
        return self.items[-1].id if self.items else None

    def insert(self, item: ConvItem, previous_item_id: str | None = None) -> str | None:
        """Insert and return the id of the item now before it. Caller checks the id exists."""
        if previous_item_id is None:
            prev = self.last_id()
            self.items.append(item)
            return prev
        if previous_item_id == "root":
            self.items.insert(0, item)
            return None
        i = self.index(previous_item_id)
        self.items.insert(i + 1, item)
        return previous_item_id

    def previous_of(self, item_id: str) -> str | None:
        i = self.index(item_id)
        return self.items[i - 1].id if i > 0 else None

    def delete(self, item_id: str) -> bool:
        i = self.index(item_id)
        if i < 0:
            return False
        del self.items[i]
        return True


def context_tokens(instructions: str | None, items: list[ConvItem]) -> dict[str, Any]:
    """`input_tokens` and `input_token_details` for a response that sees `items`."""
    text = text_tokens(instructions)
    audio = 0
    for item in items:
        t, a = item.tokens()
        text += t
        audio += a
    return {
        "input_tokens": text + audio,
        "input_token_details": {
            "text_tokens": text,
            "audio_tokens": audio,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
    }


def usage(context: dict[str, Any], out_text_tokens: int, out_audio_ms: float) -> dict[str, Any]:
    """A complete `RealtimeResponseUsage` dict."""
    out_audio = math.ceil(out_audio_ms * ASSISTANT_AUDIO_TOKENS_PER_S / 1000)
    output = out_text_tokens + out_audio
    return {
        "total_tokens": context["input_tokens"] + output,
        "input_tokens": context["input_tokens"],
        "output_tokens": output,
        "input_token_details": context["input_token_details"],
        "output_token_details": {"text_tokens": out_text_tokens, "audio_tokens": out_audio},
    }


# ----------------------------------------------------------------------------- one session's core


@dataclass
class ScriptProgress:
    """How far one session is through its `Script`.

    Speech and re-created text history both advance it (see `ItemEvents`), so a session that
    is handed the first turns as text after a reconnect goes on with the next scripted line.
    """

    utterances: int = 0
    """User utterances so far: the next one is heard as `Script.transcript_for(utterances)`."""
    replies: int = 0
    """Non-greeting in-conversation replies so far: the next one says `Script.replies[replies]`."""
    greeted: bool = False
    outputs_read: set[str] = field(default_factory=set)
    """`function_call_output` items a response has read back (`Script.after_tool`)."""


class SessionCore:
    """The state every part of one fake session shares, in one place.

    `FakeSession` (the socket, the input audio buffer, dispatch), `ItemEvents` and `Responder`
    all hold this object rather than each other's attributes. `emit` is the session's: it
    validates, records and sends one server event, so every part's events leave in one order.
    """

    def __init__(self, ctx: SessionContext, model: str, emit: Callable[[dict[str, Any]], None]) -> None:
        self.ctx = ctx
        self.script = ctx.script
        self.model = model
        self.emit = emit
        self.tag = secrets.token_hex(3)
        self.id = f"sess_{self.tag}"
        self.conversation_id = f"conv_{self.tag}"
        self.config: dict[str, Any] = default_session(model)
        """The effective session config (replaced as a whole on each accepted `session.update`)."""
        self.conversation = Conversation()
        self.progress = ScriptProgress()
        self.input_format: AudioFormat = PCM24K
        """The input audio format now in force (what appended audio and input_audio items are in)."""
        self.closed = False
        """Set once the connection is closing: nothing more is emitted."""
        self._counter = 0

    def new_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self.tag}{self._counter:05d}"

    def next_event_id(self) -> str:
        """The `event_id` of the next server event (the same counter as `new_id`)."""
        self._counter += 1
        return f"event_{self.tag}{self._counter:06d}"

    def violation(self, message: str) -> None:
        self.ctx.violations.append(f"{self.id}: {message}")

    def error(
        self, message: str, *, code: str | None, param: str | None = None, event_id: str | None = None
    ) -> None:
        """Send an `error` event shaped like the real server's `invalid_request_error`s."""
        err = {"type": "invalid_request_error", "code": code, "message": message, "param": param}
        self.emit({"type": "error", "error": {**err, "event_id": event_id}})
