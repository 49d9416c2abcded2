"""The per-call state machine: Twilio and Realtime events in, actions out. No I/O, no clock.

The bridge parses every message at the edge (`twilio.parse`, `realtime_events.parse`), feeds it
in with the current time and performs the returned actions (`core/actions.py`) in order. Because
this object never awaits, every tricky moment of a call (barge-in at a given millisecond, a
transcript that arrives after the reply, a mark for audio that was cleared) is a plain,
deterministic unit test.

Phases: awaiting_start -> connecting (bridge opens Realtime) -> configuring (session.update
sent, waiting for session.updated) -> active -> ended; active -> reconnecting -> configuring
when the upstream session is lost or rolled over (`core/recovery.py`). The audio each way is in
`core/inbound.py` and `core/outbound.py`, the summary lifecycle in `core/summary_coordinator.py`.
"""

from __future__ import annotations

import binascii
import logging
from dataclasses import dataclass, field, replace
from typing import Literal

from callbot.core import realtime as rt
from callbot.core import realtime_events as ev
from callbot.core import twilio as tw
from callbot.core.actions import (
    Action,
    Checkpoint,
    ConnectRealtime,
    EndCall,
    ReconnectRealtime,
    RequestSummary,
    SendRealtime,
    SendTwilio,
)
from callbot.core.conversation import ConversationState
from callbot.core.inbound import CallerAudio
from callbot.core.memory import GREETING_HINT, MEMORY_ITEM_ID, MemorySeed
from callbot.core.outbound import OutboundAudio
from callbot.core.playback import PlaybackTracker
from callbot.core.record import CallInfo
from callbot.core.recovery import Reconnects, RecoveryPolicy, restore_events
from callbot.core.responses import Responses
from callbot.core.summary import SummaryPolicy
from callbot.core.summary_coordinator import SummaryCoordinator

log = logging.getLogger("callbot.call")

Phase = Literal["awaiting_start", "connecting", "configuring", "active", "reconnecting", "ended"]


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
    invalid_realtime: int = 0
    realtime_errors: int = 0
    late_deltas_dropped: int = 0
    barge_ins: int = 0
    reconnects: int = 0
    rollovers: int = 0
    dtmf_digits: str = ""


class CallSession:
    """One phone call: its phase, the responses in flight, and the parts that do the rest."""

    def __init__(self, config: CallConfig) -> None:
        self.config = config
        self.phase: Phase = "awaiting_start"
        self.info: CallInfo | None = None
        self.custom_parameters: dict[str, str] = {}
        self.direction = "inbound"
        self.end_reason: str | None = None
        self.stats = CallStats()
        self.conversation = ConversationState()
        mode = config.agent.audio_mode
        padding_ms = config.agent.vad_prefix_padding_ms if config.agent.vad_type == "server_vad" else 0
        self.caller_audio = CallerAudio(mode, config.inbound_batch_frames, prefix_padding_ms=padding_ms)
        self.outbound = OutboundAudio(
            mode,
            self.conversation,
            lead_ms=config.playback_lead_ms,
            mark_interval_ms=config.mark_interval_ms,
            message_ms=config.media_message_ms,
        )
        self.summaries = SummaryCoordinator(config.summary)  # one in flight, applied once confirmed
        self.upstream = Reconnects(config.recovery)
        self.responses = Responses()
        self._caller_speaking = False
        self._ready_deadline_ms: int | None = None
        self._last_twilio_ms = 0
        self._unknown_logged: set[str] = set()
        self.memory: MemorySeed | None = None
        self._configured = False  # a session has been configured at least once

    # ----- queries -----
    @property
    def stream_sid(self) -> str:
        return self.info.stream_sid if self.info else ""

    @property
    def playback(self) -> PlaybackTracker:
        return self.outbound.playback

    def generated_ms(self, item_id: str) -> int:
        return self.outbound.generated_ms(item_id)

    def next_wake_ms(self) -> int | None:
        """When `tick` next has audio to send (call ms: queued agent audio, or caller frames held
        past their batch's wait), or None when nothing waits.

        The deadlines (session ready, idle line, rollover, summaries) need no exact wake-up: the
        bridge ticks every call at least twice a second for them.
        """
        if self.phase == "ended":
            return None
        send, held = self.outbound.next_send_ms(), self.caller_audio.held_until_ms()
        if held is None or (send is not None and send <= held):
            return send
        return held

    # ----- phase transitions from outside -----
    def end(self, reason: str) -> list[Action]:
        if self.phase == "ended":
            return []
        self.phase = "ended"
        self.end_reason = reason
        return [EndCall(reason)]

    def set_up_call(self, agent: rt.AgentConfig, direction: str) -> None:
        """Give this call its own agent and direction before its `start` is fed in (an outbound
        call's instructions and context, core/call_lifecycle.py); later calls change nothing."""
        if self.phase != "awaiting_start":
            return
        self.config = replace(self.config, agent=agent)
        self.direction = direction

    def refuse_stream(self, reason: str) -> list[Action]:
        """The bridge will not accept this stream (e.g. a bad per-call token): end it, no ticket."""
        log.warning("refusing media stream: %s", reason)
        self.info = None  # no ticket for a stream we did not accept
        return self.end(reason)

    # ----- Twilio side -----
    def receive_twilio(self, event: tw.TwilioEvent, now_ms: int) -> list[Action]:
        self.stats.twilio_messages += 1
        self._last_twilio_ms = now_ms
        match event:
            case tw.Media():
                return self._on_media(event, now_ms)
            case tw.Mark():
                self.playback.mark_echoed(event.name, at_ms=now_ms)
            case tw.Start():
                return self._on_start(event)
            case tw.Stop():
                return self._flush_inbound() + self.end("caller hung up")
            case tw.Dtmf():
                return self._on_dtmf(event, now_ms)
            case tw.Invalid():
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
            direction=self.direction,
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
        append = self.caller_audio.push(event, now_ms)
        return [SendRealtime(append)] if append is not None else []

    def _flush_inbound(self) -> list[Action]:
        """Append the caller frames held for a batch, if the session can take them."""
        if self.phase != "active":
            self.caller_audio.drop_held()
            return []
        append = self.caller_audio.flush()
        return [SendRealtime(append)] if append is not None else []

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

    def set_memory(self, seed: MemorySeed | None) -> None:
        """The returning caller's memory (core/memory.py), looked up by the bridge at call start.

        Only taken before the first session is configured: it goes in ahead of the greeting or
        not at all (a lookup that came too late is dropped, the call goes on without it)."""
        if not self._configured:
            self.memory = seed

    @property
    def memory_ticket_ids(self) -> tuple[int, ...]:
        """The earlier tickets whose summaries seeded this call."""
        return self.memory.ticket_ids if self.memory is not None else ()

    # ----- the Realtime link (core/recovery.py keeps the attempts and the session's age) -----
    def realtime_connected(self, now_ms: int) -> list[Action]:
        if self.phase not in ("connecting", "reconnecting"):
            return []
        self.upstream.restoring = self.phase == "reconnecting"
        self.phase = "configuring"
        self._ready_deadline_ms = now_ms + self.config.session_ready_timeout_ms
        return [SendRealtime(rt.session_update(self.config.agent))]

    def realtime_closed(self, reason: str, now_ms: int) -> list[Action]:
        """The live Realtime link failed: reconnect, within bounds."""
        if self.phase in ("ended", "awaiting_start", "reconnecting"):
            return []
        return self._retry_upstream(reason)

    def realtime_connect_failed(self, reason: str, now_ms: int) -> list[Action]:
        """Opening a Realtime session failed: try again after the next backoff, or give up."""
        if self.phase in ("ended", "awaiting_start"):
            return []
        return self._retry_upstream(reason)

    def _retry_upstream(self, reason: str) -> list[Action]:
        delay_ms = self.upstream.next_delay_ms()
        if delay_ms is None:
            failed = self.upstream.attempts
            return self.end(f"Realtime connection lost ({reason}); {failed} reconnects failed")
        self.stats.reconnects += 1
        log.warning("Realtime link lost (%s); reconnect attempt %d", reason, self.upstream.attempts)
        return self._start_reconnect(delay_ms, reason)

    def _start_reconnect(self, delay_ms: int, reason: str) -> list[Action]:
        """Forget the old session's in-flight state; queued audio keeps playing to the caller."""
        self.phase = "reconnecting"
        self.responses.new_session()
        self.summaries.reset()
        self._caller_speaking = False
        self.caller_audio.drop_held()
        self.outbound.finish_item()
        return [ReconnectRealtime(delay_ms, reason)]

    # ----- Realtime side -----
    def receive_realtime(self, event: ev.RealtimeEvent, now_ms: int) -> list[Action]:
        self.stats.realtime_events += 1
        if self.phase == "ended":
            return []  # nothing goes to Twilio after stop (docs/protocols.md §4.5)
        match event:
            case ev.AudioDelta():
                return self._on_audio_delta(event, now_ms)
            case ev.AudioDone(item_id):
                if not self.outbound.finish_item(item_id):
                    return []
                return self.outbound.send_due(now_ms, self.stream_sid, [])
            case ev.TranscriptDelta(item_id, delta):
                self.conversation.assistant_transcript_delta(item_id, delta)
            case ev.TranscriptDone(item_id, transcript):
                self.conversation.assistant_transcript_done(item_id, transcript)
            case ev.SpeechStarted():
                return self._on_speech_started(event, now_ms)
            case ev.SpeechStopped(item_id, audio_end_ms):
                self._caller_speaking = False
                # Taken as the end of the speech, as the fake's VAD reports it; the API reference
                # says it "includes" the silence that ended the turn, without saying how much.
                stopped = self.caller_audio.call_ms(audio_end_ms)
                self.conversation.caller_speech(item_id, stopped_ms=stopped)
            case ev.ItemAdded():
                return self._on_item_added(event, now_ms)
            case ev.ItemDone(item_id, item):
                out = self._on_item_added(event, now_ms) if self.conversation.get(item_id) is None else []
                self.conversation.item_done(item)
                self.summaries.item_done(item_id, now_ms)
                return out
            case ev.ItemDeleted(item_id):
                self.summaries.delete_settled(item_id)
                self.conversation.item_deleted(item_id)
            case ev.TranscriptionCompleted(item_id, transcript):
                self.conversation.user_transcript(item_id, transcript)
                return [Checkpoint(), *self._maybe_summarise(now_ms)]
            case ev.TranscriptionFailed(item_id, message):
                log.warning("caller transcription failed for %s: %s", item_id, message)
                self.conversation.user_transcript_failed(item_id)
            case ev.ResponseCreated(response_id, out_of_band=False):
                self.responses.created(response_id)
                self.summaries.response_created(response_id)
            case ev.ResponseDone(response_id, out_of_band=False, usage=usage):
                return self._on_response_done(response_id, usage, now_ms)
            case ev.SessionUpdated():
                return self._on_session_updated(event, now_ms)
            case ev.ServerError():
                return self._on_error(event, now_ms)
            case ev.Unknown(kind):
                self.stats.unknown_realtime += 1
                if kind not in self._unknown_logged:
                    self._unknown_logged.add(kind)
                    log.warning("unhandled Realtime event type %r", kind)
            case ev.Invalid(kind, reason):
                self.stats.invalid_realtime += 1
                log.warning("ignoring Realtime event %r: %s", kind, reason)
        return []  # Ignored (docs/protocols.md §9.2), out-of-band responses (§10.5), or done

    def _on_session_updated(self, event: ev.SessionUpdated, now_ms: int) -> list[Action]:
        if self.phase != "configuring":
            return []
        agent = self.config.agent
        problem = rt.formats_problem(event.input_format, event.output_format, agent.audio_mode)
        if problem:
            log.error("%s", problem)
            return self.end(problem)
        self.phase = "active"
        self._configured = True
        self._ready_deadline_ms = None
        self.upstream.session_ready(now_ms)
        self.caller_audio.new_session(now_ms)
        if self.upstream.restoring:
            self.upstream.restoring = False
            return [SendRealtime(restore) for restore in restore_events(self.conversation, self.memory)]
        out: list[Action] = []
        if self.memory is not None:
            # One system item at the root, created before the greeting's response is asked for,
            # so the greeting already sees it (docs/memory.md §2).
            memory = rt.system_message(MEMORY_ITEM_ID, self.memory.text, previous_item_id="root")
            out.append(SendRealtime(memory))
        if not agent.greeting:
            return out
        greeting = f"{agent.greeting}\n\n{GREETING_HINT}" if self.memory is not None else agent.greeting
        instructions = f"{agent.instructions}\n\n{greeting}".strip()
        out.append(SendRealtime(rt.response_create(instructions, event_id="evt_greeting")))
        return out

    def _on_speech_started(self, event: ev.SpeechStarted, now_ms: int) -> list[Action]:
        """Barge-in (docs/protocols.md §10.4): clear Twilio, cancel, truncate at what was heard."""
        self._caller_speaking = True
        started = self.caller_audio.speech_started_ms(event.audio_start_ms)
        self.conversation.caller_speech(event.item_id, started_ms=min(started, now_ms))
        if not self.outbound.is_audible(now_ms) and self.responses.active is None:
            return []
        self.stats.barge_ins += 1
        cut = self.outbound.interrupt(now_ms)
        out: list[Action] = [SendTwilio(tw.encode_clear(self.stream_sid))] if cut.twilio_had_audio else []
        cancel = self.responses.cancel_active()
        if cancel is not None:
            out.append(SendRealtime(rt.response_cancel(cancel)))
        if cut.item_id is not None and cut.first:
            heard = min(cut.heard_ms, cut.generated_ms)
            if cut.generated_ms > 0:
                out.append(SendRealtime(rt.truncate(cut.item_id, heard)))
            self.conversation.interrupted(cut.item_id, heard, cut.generated_ms)
        return out

    def _on_audio_delta(self, event: ev.AudioDelta, now_ms: int) -> list[Action]:
        item_id = event.item_id
        if self.outbound.is_dropped(item_id) or self.responses.is_cancelled(event.response_id):
            self.stats.late_deltas_dropped += 1
            return []
        try:
            audio = binascii.a2b_base64(event.delta)
        except binascii.Error:
            log.warning("ignoring an audio delta with invalid base64 for item %s", item_id)
            return []
        self.outbound.push(item_id, audio)
        return self.outbound.send_due(now_ms, self.stream_sid, [])

    def _on_response_done(
        self, response_id: str | None, usage: ev.JsonObject | None, now_ms: int
    ) -> list[Action]:
        self.responses.done(response_id)
        if usage is not None:
            self.conversation.response_usage(usage, now_ms)
            self.summaries.response_usage(self.conversation, response_id)
        return [Checkpoint(), *self._maybe_summarise(now_ms)]

    def _on_item_added(self, event: ev.ItemAdded | ev.ItemDone, now_ms: int) -> list[Action]:
        item_id = event.item_id
        is_summary = self.summaries.is_inserting(item_id)
        is_memory = item_id == MEMORY_ITEM_ID and self.memory is not None
        self.conversation.item_added(
            event.item, event.previous_item_id, now_ms, is_summary=is_summary, is_memory=is_memory
        )
        if is_summary:
            deletes = self.summaries.confirmed(self.conversation, item_id, now_ms, self.responses.active)
            return [SendRealtime(delete) for delete in deletes]
        return []

    def _on_error(self, error: ev.ServerError, now_ms: int) -> list[Action]:
        code = error.code
        if error.harmless_race:
            log.info("Realtime reported %s (a harmless race)", code)
            return []
        summary_id = self.summaries.client_event_failed(error.client_event_id or "")
        if summary_id is not None:
            return self.summary_failed(summary_id, f"inserting the summary failed: {error.message}", now_ms)
        self.stats.realtime_errors += 1
        log.warning(
            "Realtime error %s/%s for event %s: %s",
            error.error_type,
            code,
            error.client_event_id,
            error.message,
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
        """Send due audio and enforce deadlines: at `next_wake_ms`, and twice a second at least."""
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
            self.outbound.send_due(now_ms, self.stream_sid, out)
        held = self.caller_audio.held_until_ms()
        if held is not None and now_ms >= held:
            out.extend(self._flush_inbound())  # Twilio's frames stopped mid-batch: do not hold them
        if self.summaries.check_due(now_ms):
            out.extend(self._maybe_summarise(now_ms))
        return out

    def _rollover_due(self, now_ms: int) -> bool:
        busy = self._caller_speaking or self.responses.active is not None or self.playback.is_playing(now_ms)
        return self.upstream.rollover_due(now_ms, busy=busy)
