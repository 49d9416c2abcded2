"""The Realtime side of a call: what each server event does to a `CallSession`.

`CallSession.receive_realtime` keeps the one `match` on the parsed event (`core/realtime_events.py`)
and the small cases; the handlers with more to do are here: the session being confirmed (with
the greeting and a returning caller's memory), barge-in, agent audio, a finished response, an
added item and a server error. No I/O, no clock.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pybase64

from callbot.core import realtime as rt
from callbot.core import realtime_events as ev
from callbot.core import twilio as tw
from callbot.core.actions import Action, Checkpoint, SendRealtime, SendTwilio
from callbot.core.memory import GREETING_HINT, MEMORY_ITEM_ID, MemorySeed
from callbot.core.recovery import restore_events

if TYPE_CHECKING:
    from callbot.core.call import CallSession

log = logging.getLogger("callbot.call")


def on_session_updated(call: CallSession, event: ev.SessionUpdated, now_ms: int) -> list[Action]:
    if call.phase != "configuring":
        return []
    agent = call.config.agent
    problem = rt.formats_problem(event.input_format, event.output_format, agent.audio_mode)
    if problem:
        log.error("%s", problem)
        return call.end(problem)
    call.phase = "active"
    call.configured = True
    call.ready_deadline_ms = None
    call.upstream.session_ready(now_ms)
    call.caller_audio.new_session(now_ms)
    if call.upstream.restoring:
        call.upstream.restoring = False
        return [SendRealtime(restore) for restore in restore_events(call.conversation, call.memory)]
    return first_session_events(agent, call.memory)


def first_session_events(agent: rt.AgentConfig, memory: MemorySeed | None) -> list[Action]:
    """What a call's first confirmed session gets: the caller's memory, then the greeting."""
    out: list[Action] = []
    if memory is not None:
        # One system item at the root, created before the greeting's response is asked for,
        # so the greeting already sees it (docs/memory.md §2).
        out.append(SendRealtime(rt.system_message(MEMORY_ITEM_ID, memory.text, previous_item_id="root")))
    if not agent.greeting:
        return out
    greeting = f"{agent.greeting}\n\n{GREETING_HINT}" if memory is not None else agent.greeting
    instructions = f"{agent.instructions}\n\n{greeting}".strip()
    out.append(SendRealtime(rt.response_create(instructions, event_id="evt_greeting")))
    return out


def on_speech_started(call: CallSession, event: ev.SpeechStarted, now_ms: int) -> list[Action]:
    """Barge-in (docs/protocols.md §10.4): clear Twilio, cancel, truncate at what was heard."""
    call.caller_speaking = True
    started = call.caller_audio.speech_started_ms(event.audio_start_ms)
    call.conversation.caller_speech(event.item_id, started_ms=min(started, now_ms))
    if not call.outbound.is_audible(now_ms) and call.responses.active is None:
        return []
    call.stats.barge_ins += 1
    cut = call.outbound.interrupt(now_ms)
    out: list[Action] = [SendTwilio(tw.encode_clear(call.stream_sid))] if cut.twilio_had_audio else []
    out.extend(call.tools.barge_in(now_ms))  # a goodbye cut short calls the hang-up off
    cancel = call.responses.cancel_active()
    if cancel is not None:
        out.append(SendRealtime(rt.response_cancel(cancel)))
    if cut.item_id is not None and cut.first:
        heard = min(cut.heard_ms, cut.generated_ms)
        if cut.generated_ms > 0:
            out.append(SendRealtime(rt.truncate(cut.item_id, heard)))
        call.conversation.interrupted(cut.item_id, heard, cut.generated_ms)
    return out


def on_audio_delta(call: CallSession, event: ev.AudioDelta, now_ms: int) -> list[Action]:
    item_id = event.item_id
    if call.outbound.is_dropped(item_id) or call.responses.is_cancelled(event.response_id):
        call.stats.late_deltas_dropped += 1
        return []
    try:
        audio = pybase64.b64decode(event.delta, validate=True)  # a tenth of binascii's time
    except ValueError:  # binascii.Error, or text that is not ASCII
        log.warning("ignoring an audio delta with invalid base64 for item %s", item_id)
        return []
    call.outbound.push(item_id, audio)
    return call.outbound.send_due(now_ms, call.stream_sid, [])


def on_response_done(call: CallSession, event: ev.ResponseDone, now_ms: int) -> list[Action]:
    response_id, usage = event.response_id, event.usage
    call.responses.done(response_id)
    if usage is not None:
        call.conversation.response_usage(usage, now_ms)
        call.summaries.response_usage(call.conversation, response_id)
    tools = call.tools.response_done(response_id, event.status, event.reason, call._moment(now_ms))
    return [*tools, Checkpoint(), *call.maybe_summarise(now_ms)]


def on_item_added(call: CallSession, event: ev.ItemAdded | ev.ItemDone, now_ms: int) -> list[Action]:
    item_id = event.item_id
    is_summary = call.summaries.is_inserting(item_id)
    is_memory = item_id == MEMORY_ITEM_ID and call.memory is not None
    call.conversation.item_added(
        event.item, event.previous_item_id, now_ms, is_summary=is_summary, is_memory=is_memory
    )
    call.tools.item_added(event.item, now_ms)
    if is_summary:
        deletes = call.summaries.confirmed(call.conversation, item_id, now_ms, call.responses.active)
        return [SendRealtime(delete) for delete in deletes]
    return []


def on_error(call: CallSession, error: ev.ServerError, now_ms: int) -> list[Action]:
    code = error.code
    if call.tools.reply_refused(error.client_event_id):
        return call.tools.poll(call._moment(now_ms))
    if error.harmless_race:
        log.info("Realtime reported %s (a harmless race)", code)
        return []
    summary_id = call.summaries.client_event_failed(error.client_event_id or "")
    if summary_id is not None:
        return call.summary_failed(summary_id, f"inserting the summary failed: {error.message}", now_ms)
    call.stats.realtime_errors += 1
    log.warning(
        "Realtime error %s/%s for event %s: %s",
        error.error_type,
        code,
        error.client_event_id,
        error.message,
    )
    if code == "session_expired":
        return call.realtime_closed("session expired", now_ms)
    return []
