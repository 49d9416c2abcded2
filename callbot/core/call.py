"""The per-call state machine: Twilio and Realtime events in, actions out. No I/O, no clock.

The bridge parses every message at the edge (`twilio.parse`, `realtime_events.parse`), feeds it
in with the current time and performs the returned actions (`core/actions.py`) in order. Because
this object never awaits, every tricky moment of a call (barge-in at a given millisecond, a
transcript that arrives after the reply, a mark for audio that was cleared) is a plain,
deterministic unit test.

Phases: awaiting_start -> connecting (bridge opens Realtime) -> configuring (session.update
sent, waiting for session.updated) -> active -> ended; active -> reconnecting -> configuring
when the upstream session is lost or rolled over (`core/recovery.py`). The audio each way is in
`core/inbound.py` and `core/outbound.py`, the summary lifecycle in `core/summary_coordinator.py`;
what each Twilio event does is in `core/call_twilio.py`, the larger Realtime event handlers in
`core/call_realtime.py` (the `match` that dispatches them stays here).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Literal

from callbot.core import call_realtime, call_twilio
from callbot.core import realtime as rt
from callbot.core import realtime_events as ev
from callbot.core.actions import (
    Action,
    Checkpoint,
    EndCall,
    ReconnectRealtime,
    RequestSummary,
    SendRealtime,
)
from callbot.core.call_config import CallConfig, CallStats
from callbot.core.conversation import ConversationState
from callbot.core.inbound import CallerAudio
from callbot.core.memory import MemorySeed
from callbot.core.outbound import OutboundAudio
from callbot.core.playback import PlaybackTracker
from callbot.core.record import CallInfo, ToolOutcome
from callbot.core.recovery import Reconnects
from callbot.core.responses import Responses
from callbot.core.summary_coordinator import SummaryCoordinator
from callbot.core.tools import Moment, ToolCalls

__all__ = ["CallConfig", "CallSession", "CallStats"]  # CallConfig/CallStats live in core/call_config.py

log = logging.getLogger("callbot.call")

Phase = Literal["awaiting_start", "connecting", "configuring", "active", "reconnecting", "ended"]


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
            prebuffer_ms=config.playback_prebuffer_ms,
        )
        self.playback: PlaybackTracker = self.outbound.playback
        """The outbound tracker (which OutboundAudio never replaces), read on every Twilio frame."""
        self.summaries = SummaryCoordinator(config.summary)  # one in flight, applied once confirmed
        self.upstream = Reconnects(config.recovery)
        self.responses = Responses()
        self.tools = ToolCalls(config.tools, self.conversation)  # core/tools.py: what the agent does
        self.caller_speaking = False
        self.ready_deadline_ms: int | None = None
        self.last_twilio_ms = 0
        self._unknown_logged: set[str] = set()
        self.memory: MemorySeed | None = None
        self.configured = False  # a session has been configured at least once

    # ----- queries -----
    @property
    def stream_sid(self) -> str:
        return self.info.stream_sid if self.info else ""

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

    # ----- Twilio side (core/call_twilio.py) -----
    receive_twilio = call_twilio.receive
    """`receive_twilio(event, now_ms)`: the function itself as the method, so each of the 50
    frames a second per call costs no call in between."""

    def set_memory(self, seed: MemorySeed | None) -> None:
        """The returning caller's memory (core/memory.py), looked up by the bridge at call start.

        Only taken before the first session is configured: it goes in ahead of the greeting or
        not at all (a lookup that came too late is dropped, the call goes on without it)."""
        if not self.configured:
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
        self.ready_deadline_ms = now_ms + self.config.session_ready_timeout_ms
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
        self.caller_speaking = False
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
                return call_realtime.on_audio_delta(self, event, now_ms)
            case ev.AudioDone(item_id):
                if not self.outbound.finish_item(item_id):
                    return []
                return self.outbound.send_due(now_ms, self.stream_sid, [])
            case ev.TranscriptDelta(item_id, delta):
                self.conversation.assistant_transcript_delta(item_id, delta)
            case ev.TranscriptDone(item_id, transcript):
                self.conversation.assistant_transcript_done(item_id, transcript)
            case ev.SpeechStarted():
                return call_realtime.on_speech_started(self, event, now_ms)
            case ev.SpeechStopped(item_id, audio_end_ms):
                self.caller_speaking = False
                self.tools.speech_stopped(now_ms)
                # Taken as the end of the speech, as the fake's VAD reports it; the API reference
                # says it "includes" the silence that ended the turn, without saying how much.
                stopped = self.caller_audio.call_ms(audio_end_ms)
                self.conversation.caller_speech(item_id, stopped_ms=stopped)
            case ev.ItemAdded():
                return call_realtime.on_item_added(self, event, now_ms)
            case ev.ItemDone(item_id, item):
                out = (
                    call_realtime.on_item_added(self, event, now_ms)
                    if self.conversation.get(item_id) is None
                    else []
                )
                self.conversation.item_done(item)
                self.summaries.item_done(item_id, now_ms)
                return out
            case ev.ItemDeleted(item_id):
                self.summaries.delete_settled(item_id)
                self.conversation.item_deleted(item_id)
            case ev.TranscriptionCompleted(item_id, transcript):
                self.conversation.user_transcript(item_id, transcript)
                return [Checkpoint(), *self.maybe_summarise(now_ms)]
            case ev.TranscriptionFailed(item_id, message):
                log.warning("caller transcription failed for %s: %s", item_id, message)
                self.conversation.user_transcript_failed(item_id)
            case ev.ResponseCreated(response_id, out_of_band=False):
                self.responses.created(response_id)
                self.summaries.response_created(response_id)
                self.tools.response_created()
            case ev.ResponseDone(out_of_band=False):
                return call_realtime.on_response_done(self, event, now_ms)
            case ev.OutputItemDone(response_id, item):
                self.tools.output_item_done(item, response_id, now_ms)
            case ev.McpCallStarted(item_id):
                self.tools.mcp_call_started(item_id, now_ms)
            case ev.McpListFailed(item_id):
                label = self.tools.mcp_list_failed(item_id)
                log.warning("listing the tools of MCP server %s failed: the agent cannot use it", label)
            case ev.SessionUpdated():
                return call_realtime.on_session_updated(self, event, now_ms)
            case ev.ServerError():
                return call_realtime.on_error(self, event, now_ms)
            case ev.Unknown(kind):
                self.stats.unknown_realtime += 1
                if kind not in self._unknown_logged:
                    self._unknown_logged.add(kind)
                    log.warning("unhandled Realtime event type %r", kind)
            case ev.Invalid(kind, reason):
                self.stats.invalid_realtime += 1
                log.warning("ignoring Realtime event %r: %s", kind, reason)
        return []  # Ignored (docs/protocols.md §9.2), out-of-band responses (§10.5), or done

    # ----- summaries (policy in core/summary.py, lifecycle in core/summary_coordinator.py) -----
    def maybe_summarise(self, now_ms: int) -> list[Action]:
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
            and self.ready_deadline_ms is not None
            and now_ms >= self.ready_deadline_ms
        ):
            return self.end("Realtime session was not ready in time")
        if self.phase == "ended":
            return []
        if now_ms - self.last_twilio_ms > self.config.recovery.twilio_idle_timeout_ms:
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
            out.extend(call_twilio.flush_inbound(self))  # Twilio's frames stopped mid-batch: do not hold them
        if self.summaries.check_due(now_ms):
            out.extend(self.maybe_summarise(now_ms))
        if self.phase == "active":
            out.extend(self.tools.poll(self._moment(now_ms)))
        return out

    # ----- tools (decisions in core/tools.py; the bridge runs them) -----
    def _moment(self, now_ms: int) -> Moment:
        active = self.responses.active is not None
        return Moment(now_ms, self.caller_speaking, active, self.outbound.drained())

    def tool_result(
        self, call_id: str, output: str | None, error: str | None, outcome: ToolOutcome, now_ms: int
    ) -> list[Action]:
        """An HTTP tool answered, failed or timed out; after hang-up it is only recorded."""
        out = self.tools.result(call_id, output, error, outcome, self._moment(now_ms))
        return out if self.phase == "active" else []

    def call_update_failed(self, call_id: str, error: str, now_ms: int) -> list[Action]:
        """Twilio refused the hang-up or transfer: the call goes on and the model is told."""
        out = self.tools.update_failed(call_id, error, self._moment(now_ms))
        return out if self.phase != "ended" else []

    def _rollover_due(self, now_ms: int) -> bool:
        busy = self.caller_speaking or self.responses.active is not None or self.playback.is_playing(now_ms)
        return self.upstream.rollover_due(now_ms, busy=busy)
