"""The per-call state machine: Twilio and Realtime events in, actions out. No I/O, no clock.

The bridge feeds every event in with the current time and performs the returned actions in
order. Because this object never awaits, every tricky moment of a call (barge-in at a given
millisecond, a transcript that arrives after the reply, a mark for audio that was cleared)
is a plain, deterministic unit test.

Phases: awaiting_start -> connecting (bridge opens Realtime) -> configuring (session.update
sent, waiting for session.updated) -> active -> ended.
"""

from __future__ import annotations

import binascii
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from callbot.core import realtime as rt
from callbot.core import twilio as tw
from callbot.core.audio import Framer, InboundConverter, OutboundConverter
from callbot.core.conversation import ConversationState
from callbot.core.playback import BYTES_PER_MS, FRAME_BYTES, FRAME_MS, PlaybackTracker
from callbot.core.record import CallInfo
from callbot.core.recovery import RecoveryPolicy, restore_events
from callbot.core.summary import SummaryPolicy, SummaryRequest
from callbot.core.summary_coordinator import SummaryCoordinator

log = logging.getLogger("callbot.call")

Phase = Literal["awaiting_start", "connecting", "configuring", "active", "reconnecting", "ended"]


# ----- actions -----
@dataclass(frozen=True, slots=True)
class SendTwilio:
    text: str


@dataclass(frozen=True, slots=True)
class SendRealtime:
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ConnectRealtime:
    """Open this call's Realtime session, then call `realtime_connected`."""


@dataclass(frozen=True, slots=True)
class EndCall:
    """Close both sides of the call; `reason` goes on the ticket."""

    reason: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A turn completed: persist the transcript so far (a crash leaves a partial ticket)."""


@dataclass(frozen=True, slots=True)
class RequestSummary:
    """Summarise these turns in the background; answer with receive_summary/summary_failed."""

    request: SummaryRequest


@dataclass(frozen=True, slots=True)
class ReconnectRealtime:
    """Drop the current Realtime link, wait `delay_ms`, open a new one, then `realtime_connected`."""

    delay_ms: int
    reason: str


Action = (
    SendTwilio | SendRealtime | ConnectRealtime | ReconnectRealtime | EndCall | Checkpoint | RequestSummary
)


@dataclass(frozen=True, slots=True)
class CallConfig:
    """How one call is shaped. The defaults here are the finest shape (one 20 ms frame per Twilio
    message and per append, a mark every 60 ms, 100 ms ahead), which the frame-level core tests
    spell out; `callbot serve` takes its values from settings.py (larger messages, deeper lead)."""

    agent: rt.AgentConfig = field(default_factory=rt.AgentConfig)
    playback_lead_ms: int = 100
    mark_interval_ms: int = 60
    media_message_ms: int = 20
    """Audio per Twilio media message (whole 20 ms frames); with `mark_interval_ms` equal to it,
    each message is followed by one mark."""
    session_ready_timeout_ms: int = 10_000
    inbound_batch_frames: int = 1
    """Caller frames per input_audio_buffer.append: 1 for the lowest latency; 2-5 halve to fifth
    the per-message cost (and the resampler calls) at 20-80 ms of added inbound delay."""
    summary: SummaryPolicy = field(default_factory=SummaryPolicy)
    recovery: RecoveryPolicy = field(default_factory=RecoveryPolicy)


@dataclass(slots=True)
class CallStats:
    twilio_messages: int = 0
    inbound_frames: int = 0
    inbound_dropped_not_ready: int = 0
    invalid_twilio: int = 0
    realtime_events: int = 0
    unknown_realtime: int = 0
    realtime_errors: int = 0
    late_deltas_dropped: int = 0
    barge_ins: int = 0
    reconnects: int = 0
    rollovers: int = 0
    dtmf_digits: str = ""


# Realtime events we know and deliberately ignore (docs/protocols.md §9.2).
_IGNORED = frozenset(
    {
        "session.created",
        "conversation.created",
        "input_audio_buffer.committed",
        "input_audio_buffer.cleared",
        "input_audio_buffer.timeout_triggered",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.segment",
        "conversation.item.truncated",
        "conversation.item.retrieved",
        "response.output_item.added",
        "response.output_item.done",
        "response.content_part.added",
        "response.content_part.done",
        "response.output_text.delta",
        "response.output_text.done",
        "rate_limits.updated",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
    }
)

# Errors that are expected in races and harmless (docs/protocols.md §8.2).
_BENIGN_ERROR_CODES = frozenset({"response_cancel_not_active", "conversation_already_has_active_response"})


class CallSession:
    """One phone call. Owns its conversation, playback tracker and audio converters."""

    def __init__(self, config: CallConfig) -> None:
        self.config = config
        self.phase: Phase = "awaiting_start"
        self.info: CallInfo | None = None
        self.custom_parameters: dict[str, str] = {}
        self.conversation = ConversationState()
        self.playback = PlaybackTracker(
            config.playback_lead_ms, config.mark_interval_ms, message_ms=config.media_message_ms
        )
        mode = config.agent.audio_mode
        self._inbound = InboundConverter(mode)
        self._inbound_pending: list[bytes] = []
        self._inbound_pending_since_ms = 0
        self._inbound_last_ms = 0  # when the latest held caller frame arrived
        self._outbound = OutboundConverter(mode)
        self._framer = Framer(FRAME_BYTES)
        self._framer_item: str | None = None
        self._generated_bytes: dict[str, int] = {}
        self._active_response: str | None = None
        self._cancelled_responses: set[str] = set()
        self._dropped_items: set[str] = set()
        self._ready_deadline_ms: int | None = None
        self._unknown_logged: set[str] = set()
        self.end_reason: str | None = None
        self.stats = CallStats()
        # summariser state: one request in flight, applied only once its item is confirmed
        self.summaries = SummaryCoordinator(config.summary)
        # recovery state
        self._reconnect_attempt = 0
        self._restoring = False
        self._session_started_ms = 0
        self._caller_speaking = False
        self._last_twilio_ms = 0
        # the session's input-audio clock (docs/protocols.md §9.1: audio_start_ms/audio_end_ms count
        # the audio appended since the session began): mu-law bytes appended, and when the latest went
        self._appended_bytes = 0
        self._appended_at_ms = 0

    # ----- helpers -----
    @property
    def _inbound_hold_ms(self) -> int:
        """Longest a held caller frame waits for its batch before the tick sends it anyway."""
        return 2 * self.config.inbound_batch_frames * FRAME_MS

    @property
    def stream_sid(self) -> str:
        return self.info.stream_sid if self.info else ""

    def generated_ms(self, item_id: str) -> int:
        return self._generated_bytes.get(item_id, 0) // self._outbound.bytes_per_ms

    def end(self, reason: str) -> list[Action]:
        if self.phase == "ended":
            return []
        self.phase = "ended"
        self.end_reason = reason
        return [EndCall(reason)]

    def _send_due(self, now_ms: int, out: list[Action]) -> None:
        sid = self.stream_sid
        last: str | None = None
        for message in self.playback.take_messages(now_ms):
            out.append(SendTwilio(tw.encode_media(sid, message.audio)))
            if message.mark is not None:
                out.append(SendTwilio(tw.encode_mark(sid, message.mark)))
            if message.item_id != last:
                if last is not None:
                    self._note_played(last)
                last = message.item_id
        if last is not None:
            self._note_played(last)

    def _note_played(self, item_id: str) -> None:
        span = self.playback.played_span(item_id)
        if span is not None:
            self.conversation.assistant_played(item_id, *span)

    def caller_audio_call_ms(self, audio_ms: int) -> int:
        """Call time of a point on this session's input-audio clock (a VAD event's audio_*_ms).

        Caller audio is appended as it arrives from Twilio, in real time, so a point `d` ms
        before the end of what was appended was said `d` ms before that last append arrived.
        Measuring back from the latest append (not forward from the session's first) keeps any
        stall or gap in the stream out of the answer; a new session starts a new clock.
        """
        behind_ms = (self._appended_bytes - audio_ms * BYTES_PER_MS) // BYTES_PER_MS
        return max(0, self._appended_at_ms - behind_ms)

    # ----- Twilio side -----
    def receive_twilio(self, event: tw.TwilioEvent, now_ms: int) -> list[Action]:
        self.stats.twilio_messages += 1
        self._last_twilio_ms = now_ms
        if isinstance(event, tw.Media):
            return self._on_media(event, now_ms)
        if isinstance(event, tw.Mark):
            self.playback.mark_echoed(event.name, at_ms=now_ms)
            return []
        if isinstance(event, tw.Start):
            return self._on_start(event)
        if isinstance(event, tw.Stop):
            return self._flush_inbound() + self.end("caller hung up")
        if isinstance(event, tw.Dtmf):
            return self._on_dtmf(event, now_ms)
        if isinstance(event, tw.Invalid):
            self.stats.invalid_twilio += 1
            log.warning("ignoring Twilio message: %s", event.reason)
        return []

    def _on_start(self, event: tw.Start) -> list[Action]:
        if self.phase != "awaiting_start":
            log.warning("ignoring a second Twilio start for stream %s", event.stream_sid)
            return []
        params = event.custom_parameters
        self.custom_parameters = params
        self.info = CallInfo(
            call_sid=event.call_sid,
            stream_sid=event.stream_sid,
            account_sid=event.account_sid,
            from_number=params.get("from", ""),
            to_number=params.get("to", ""),
        )
        if event.encoding != "audio/x-mulaw" or event.sample_rate != 8000:
            return self.end(f"unsupported Twilio media format {event.encoding} {event.sample_rate} Hz")
        self.phase = "connecting"
        return [ConnectRealtime()]

    def _on_media(self, event: tw.Media, now_ms: int) -> list[Action]:
        self.stats.inbound_frames += 1
        if self.phase != "active":
            # Nothing is relayed before the session confirmed our formats (issue: bridge).
            self.stats.inbound_dropped_not_ready += 1
            return []
        batch = self.config.inbound_batch_frames
        if batch == 1:
            self._appended_bytes += len(event.audio)
            self._appended_at_ms = now_ms
            if self._inbound.passthrough:
                return [SendRealtime(rt.append(event.payload))]  # forward Twilio's base64 untouched
            audio = self._inbound.convert(event.audio)
            return [SendRealtime(rt.append(binascii.b2a_base64(audio, newline=False).decode("ascii")))]
        if not self._inbound_pending:
            self._inbound_pending_since_ms = now_ms
        self._inbound_pending.append(event.audio)
        self._inbound_last_ms = now_ms
        if len(self._inbound_pending) < batch:
            return []
        return self._flush_inbound()

    def _flush_inbound(self) -> list[Action]:
        """Append the caller frames held for a batch (a whole batch, or what is left at the end)."""
        if not self._inbound_pending:
            return []
        ulaw = b"".join(self._inbound_pending)
        self._inbound_pending.clear()
        if self.phase != "active":
            return []
        self._appended_bytes += len(ulaw)
        self._appended_at_ms = self._inbound_last_ms  # when the batch's last frame arrived
        audio = self._inbound.convert(ulaw)
        return [SendRealtime(rt.append(binascii.b2a_base64(audio, newline=False).decode("ascii")))]

    def _on_dtmf(self, event: tw.Dtmf, now_ms: int) -> list[Action]:
        """Keypad digits reach the model as a user text item (docs/protocols.md §4.6)."""
        self.stats.dtmf_digits += event.digit
        if self.phase != "active":
            return []
        item_id = f"dtmf_{len(self.stats.dtmf_digits):04d}_{now_ms}"
        # the audio before the key press goes first, so the model's input stays in order
        out = self._flush_inbound()
        out.append(SendRealtime(rt.user_text(item_id, f"[The caller pressed the key {event.digit}]")))
        return out

    # ----- Realtime side -----
    def realtime_connected(self, now_ms: int) -> list[Action]:
        if self.phase not in ("connecting", "reconnecting"):
            return []
        self._restoring = self.phase == "reconnecting"
        self.phase = "configuring"
        self._ready_deadline_ms = now_ms + self.config.session_ready_timeout_ms
        return [SendRealtime(rt.session_update(self.config.agent))]

    def realtime_closed(self, reason: str, now_ms: int = 0) -> list[Action]:
        """The live Realtime link failed: reconnect, within bounds."""
        if self.phase in ("ended", "awaiting_start", "reconnecting"):
            return []
        return self._retry_upstream(reason)

    def realtime_connect_failed(self, reason: str, now_ms: int = 0) -> list[Action]:
        """Opening a Realtime session failed: try again after the next backoff, or give up."""
        if self.phase in ("ended", "awaiting_start"):
            return []
        return self._retry_upstream(reason)

    def _retry_upstream(self, reason: str) -> list[Action]:
        recovery = self.config.recovery
        if self._reconnect_attempt >= recovery.max_reconnects:
            failed = self._reconnect_attempt
            return self.end(f"Realtime connection lost ({reason}); {failed} reconnects failed")
        self._reconnect_attempt += 1
        self.stats.reconnects += 1
        log.warning("Realtime link lost (%s); reconnect attempt %d", reason, self._reconnect_attempt)
        return self._start_reconnect(recovery.delay_ms(self._reconnect_attempt), reason)

    def _start_reconnect(self, delay_ms: int, reason: str) -> list[Action]:
        """Forget the old session's in-flight state; queued audio keeps playing to the caller."""
        self.phase = "reconnecting"
        self._active_response = None
        self._cancelled_responses.clear()
        self.summaries.reset()
        self._caller_speaking = False
        self._inbound_pending.clear()  # stale by the time a new session is ready: dropped, not replayed
        if self._framer_item is not None:
            self._finish_item_audio()
        return [ReconnectRealtime(delay_ms, reason)]

    def receive_realtime(self, event: dict[str, Any], now_ms: int) -> list[Action]:
        self.stats.realtime_events += 1
        if self.phase == "ended":
            return []  # nothing goes to Twilio after stop (docs/protocols.md §4.5)
        kind = event.get("type")
        if kind == "response.output_audio.delta":
            return self._on_audio_delta(event, now_ms)
        handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
        if handler is not None:
            return handler(self, event, now_ms)
        if kind not in _IGNORED:
            self.stats.unknown_realtime += 1
            if kind not in self._unknown_logged:
                self._unknown_logged.add(str(kind))
                log.warning("unhandled Realtime event type %r", kind)
        return []

    def _on_session_updated(self, event: dict[str, Any], now_ms: int) -> list[Action]:
        if self.phase != "configuring":
            return []
        problem = rt.formats_problem(event.get("session") or {}, self.config.agent.audio_mode)
        if problem:
            log.error("%s", problem)
            return self.end(problem)
        self.phase = "active"
        self._ready_deadline_ms = None
        self._session_started_ms = now_ms
        self._appended_bytes, self._appended_at_ms = 0, now_ms  # a new session, a new audio clock
        self._reconnect_attempt = 0
        if self._restoring:
            self._restoring = False
            return [SendRealtime(event) for event in restore_events(self.conversation)]
        agent = self.config.agent
        if not agent.greeting:
            return []
        instructions = f"{agent.instructions}\n\n{agent.greeting}".strip()
        return [SendRealtime(rt.response_create(instructions, event_id="evt_greeting"))]

    def _on_speech_stopped(self, event: dict[str, Any], now_ms: int) -> list[Action]:
        self._caller_speaking = False
        end = event.get("audio_end_ms")
        if isinstance(end, int) and isinstance(event.get("item_id"), str):
            # Taken as the end of the speech, as the fake's VAD reports it; the API reference
            # says it "includes" the silence that ended the turn, without saying how much.
            self.conversation.caller_speech(event["item_id"], stopped_ms=self.caller_audio_call_ms(end))
        return []

    def _on_speech_started(self, event: dict[str, Any], now_ms: int) -> list[Action]:
        """Barge-in (docs/protocols.md §10.4): clear Twilio, cancel, truncate at what was heard."""
        self._caller_speaking = True
        start = event.get("audio_start_ms")
        if isinstance(start, int) and isinstance(event.get("item_id"), str):
            # audio_start_ms includes the VAD's prefix padding (InputAudioBufferSpeechStartedEvent):
            # the voice itself began that much later.
            started = self.caller_audio_call_ms(start + self._prefix_padding_ms())
            self.conversation.caller_speech(event["item_id"], started_ms=min(started, now_ms))
        playing = self.playback.is_playing(now_ms) or self._framer.pending > 0
        if not playing and self._active_response is None:
            return []
        self.stats.barge_ins += 1
        out: list[Action] = []
        cut = self.playback.interrupt(now_ms)
        if cut.twilio_had_audio:
            out.append(SendTwilio(tw.encode_clear(self.stream_sid)))
        item_id = cut.item_id or self._framer_item
        self._framer.clear()
        self._outbound.reset()
        self._framer_item = None
        response_id = self._active_response
        if response_id is not None and response_id not in self._cancelled_responses:
            self._cancelled_responses.add(response_id)
            out.append(SendRealtime(rt.response_cancel(response_id)))
        if item_id is not None:
            self._note_played(item_id)  # the cut moved its end to now
        if item_id is not None and item_id not in self._dropped_items:
            self._dropped_items.add(item_id)
            generated = self.generated_ms(item_id)
            heard = min(cut.heard_ms, generated)
            if generated > 0:
                out.append(SendRealtime(rt.truncate(item_id, heard)))
            self.conversation.interrupted(item_id, heard, generated)
        return out

    def _prefix_padding_ms(self) -> int:
        agent = self.config.agent
        return agent.vad_prefix_padding_ms if agent.vad_type == "server_vad" else 0

    def _on_audio_delta(self, event: dict[str, Any], now_ms: int) -> list[Action]:
        item_id = event.get("item_id")
        if (
            not isinstance(item_id, str)
            or item_id in self._dropped_items
            or event.get("response_id") in self._cancelled_responses
        ):
            self.stats.late_deltas_dropped += 1
            return []
        try:
            audio = binascii.a2b_base64(event.get("delta") or "")
        except binascii.Error:
            log.warning("ignoring an audio delta with invalid base64 for item %s", item_id)
            return []
        self._generated_bytes[item_id] = self._generated_bytes.get(item_id, 0) + len(audio)
        if self._framer_item is not None and self._framer_item != item_id:
            self._finish_item_audio()
        self._framer_item = item_id
        frames = self._framer.push(self._outbound.convert(audio))
        self.playback.enqueue(item_id, frames)
        out: list[Action] = []
        self._send_due(now_ms, out)
        return out

    def _finish_item_audio(self) -> None:
        """End of an item's audio: flush the filter tail and pad the last partial frame."""
        item_id = self._framer_item
        if item_id is None:
            return
        frames = self._framer.push(self._outbound.flush())
        last = self._framer.flush()
        if last is not None:
            frames.append(last)
        self.playback.enqueue(item_id, frames)
        self._outbound.reset()
        self._framer_item = None

    def _on_audio_done(self, event: dict[str, Any], now_ms: int) -> list[Action]:
        if event.get("item_id") != self._framer_item:
            return []
        self._finish_item_audio()
        out: list[Action] = []
        self._send_due(now_ms, out)
        return out

    def _on_response_created(self, event: dict[str, Any], now_ms: int) -> list[Action]:
        response = event.get("response") or {}
        if not rt.is_out_of_band(response):
            self._active_response = response.get("id")
            self.summaries.response_created(self._active_response)
        return []

    def _on_response_done(self, event: dict[str, Any], now_ms: int) -> list[Action]:
        response = event.get("response") or {}
        if rt.is_out_of_band(response):
            return []
        if response.get("id") == self._active_response:
            self._active_response = None
        usage = response.get("usage")
        if isinstance(usage, dict):
            self.conversation.response_usage(usage)
            self.summaries.response_usage(self.conversation, response.get("id"))
        out: list[Action] = [Checkpoint()]
        out.extend(self._maybe_summarise(now_ms))
        return out

    def _on_item_added(self, event: dict[str, Any], now_ms: int) -> list[Action]:
        item = event.get("item")
        if not isinstance(item, dict):
            return []
        item_id = str(item.get("id"))
        is_summary = self.summaries.is_inserting(item_id)
        self.conversation.item_added(item, event.get("previous_item_id"), now_ms, is_summary=is_summary)
        if is_summary:
            deletes = self.summaries.confirmed(self.conversation, item_id, now_ms, self._active_response)
            return [SendRealtime(event) for event in deletes]
        return []

    def _on_item_done(self, event: dict[str, Any], now_ms: int) -> list[Action]:
        item = event.get("item")
        if isinstance(item, dict):
            if self.conversation.get(str(item.get("id"))) is None:
                out = self._on_item_added(event, now_ms)
            else:
                out = []
            self.conversation.item_done(item)
            self.summaries.item_done(str(item.get("id")), now_ms)
            return out
        return []

    def _on_item_deleted(self, event: dict[str, Any], now_ms: int) -> list[Action]:
        item_id = event.get("item_id")
        if isinstance(item_id, str):
            self.summaries.delete_settled(item_id)
            self.conversation.item_deleted(item_id)
        return []

    def _on_transcription_completed(self, event: dict[str, Any], now_ms: int) -> list[Action]:
        self.conversation.user_transcript(str(event.get("item_id")), str(event.get("transcript") or ""))
        out: list[Action] = [Checkpoint()]
        out.extend(self._maybe_summarise(now_ms))
        return out

    def _on_transcription_failed(self, event: dict[str, Any], now_ms: int) -> list[Action]:
        item_id = str(event.get("item_id"))
        error = event.get("error") or {}
        log.warning("caller transcription failed for %s: %s", item_id, error.get("message"))
        self.conversation.user_transcript_failed(item_id)
        return []

    def _on_transcript_delta(self, event: dict[str, Any], now_ms: int) -> list[Action]:
        self.conversation.assistant_transcript_delta(str(event.get("item_id")), str(event.get("delta") or ""))
        return []

    def _on_transcript_done(self, event: dict[str, Any], now_ms: int) -> list[Action]:
        self.conversation.assistant_transcript_done(
            str(event.get("item_id")), str(event.get("transcript") or "")
        )
        return []

    def _on_error(self, event: dict[str, Any], now_ms: int) -> list[Action]:
        error = event.get("error") or {}
        code = error.get("code")
        if code in _BENIGN_ERROR_CODES:
            log.info("Realtime reported %s (a harmless race)", code)
            return []
        failed_event = str(error.get("event_id") or "")
        if failed_event.startswith("evt_delete_"):
            self.summaries.delete_settled(failed_event.removeprefix("evt_delete_"))
        summary_id = self.summaries.insert_failed_for(failed_event)
        if summary_id is not None:
            reason = f"inserting the summary failed: {error.get('message')}"
            return self.summary_failed(summary_id, reason, now_ms)
        self.stats.realtime_errors += 1
        log.warning(
            "Realtime error %s/%s for event %s: %s",
            error.get("type"),
            code,
            error.get("event_id"),
            error.get("message"),
        )
        if code == "session_expired":
            return self.realtime_closed("session expired", now_ms)
        return []

    # ----- summaries (policy in core/summary.py, lifecycle in core/summary_coordinator.py) -----
    def _maybe_summarise(self, now_ms: int) -> list[Action]:
        if self.phase != "active":
            return []
        request = self.summaries.plan(self.conversation, now_ms)
        return [RequestSummary(request)] if request is not None else []

    def receive_summary(self, summary_id: str, text: str, now_ms: int) -> list[Action]:
        """The summary model answered: insert the summary at the root, then (on confirmation) delete."""
        if self.phase == "ended":
            return []
        create = self.summaries.answered(summary_id, text)
        if create is None:
            return self.summary_failed(summary_id, "the summary model returned nothing", now_ms)
        return [SendRealtime(create)]

    def summary_failed(self, summary_id: str, reason: str, now_ms: int) -> list[Action]:
        """Nothing was deleted; try again later. The call goes on."""
        self.summaries.failed(summary_id, reason, now_ms)
        return []

    # ----- time -----
    def tick(self, now_ms: int) -> list[Action]:
        """Called every 20 ms by the bridge's pacer: send due frames, enforce deadlines."""
        if (
            self.phase == "configuring"
            and self._ready_deadline_ms is not None
            and now_ms >= self._ready_deadline_ms
        ):
            return self.end("Realtime session was not ready in time")
        if self.phase == "ended":
            return []
        if now_ms - self._last_twilio_ms > self.config.recovery.twilio_idle_timeout_ms:
            return self.end("Twilio stream went silent")
        if self.phase == "active" and self._rollover_due(now_ms):
            self.stats.rollovers += 1
            log.info("rolling the call over to a fresh Realtime session")
            return self._start_reconnect(0, "session rollover")
        out: list[Action] = []
        if self.playback.queued_frames:
            self._send_due(now_ms, out)
        if self._inbound_pending and now_ms - self._inbound_pending_since_ms >= self._inbound_hold_ms:
            out.extend(self._flush_inbound())  # Twilio's frames stopped mid-batch: do not hold them
        if self.summaries.check_due(now_ms):
            out.extend(self._maybe_summarise(now_ms))
        return out

    def _rollover_due(self, now_ms: int) -> bool:
        """Past the age limit: at a quiet moment, or regardless once the grace period is over."""
        recovery = self.config.recovery
        age = now_ms - self._session_started_ms
        if age < recovery.session_max_age_ms:
            return False
        busy = self._caller_speaking or self._active_response is not None or self.playback.is_playing(now_ms)
        quiet = not busy
        return quiet or age >= recovery.session_max_age_ms + recovery.rollover_grace_ms


_Handler = Callable[[CallSession, dict[str, Any], int], list[Action]]
_HANDLERS: dict[str, _Handler] = {
    "session.updated": CallSession._on_session_updated,
    "input_audio_buffer.speech_started": CallSession._on_speech_started,
    "input_audio_buffer.speech_stopped": CallSession._on_speech_stopped,
    "response.output_audio.done": CallSession._on_audio_done,
    "response.created": CallSession._on_response_created,
    "response.done": CallSession._on_response_done,
    "conversation.item.added": CallSession._on_item_added,
    "conversation.item.created": CallSession._on_item_added,
    "conversation.item.done": CallSession._on_item_done,
    "conversation.item.deleted": CallSession._on_item_deleted,
    "conversation.item.input_audio_transcription.completed": CallSession._on_transcription_completed,
    "conversation.item.input_audio_transcription.failed": CallSession._on_transcription_failed,
    "response.output_audio_transcript.delta": CallSession._on_transcript_delta,
    "response.output_audio_transcript.done": CallSession._on_transcript_done,
    "error": CallSession._on_error,
}
