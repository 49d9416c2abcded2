"""The Twilio side of a call: a stream's start, media, marks, DTMF and stop, for `CallSession`.

`CallSession.receive_twilio` hands every parsed Twilio event (`core/twilio.py`) here. These
functions only read and move the session's state and return actions; the phase transitions
themselves (`CallSession.end`) stay on the session. No I/O, no clock.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from callbot.core import realtime as rt
from callbot.core import twilio as tw
from callbot.core.actions import Action, ConnectRealtime, SendRealtime
from callbot.core.record import CallInfo

if TYPE_CHECKING:
    from callbot.core.call import CallSession

log = logging.getLogger("callbot.call")


def receive(call: CallSession, event: tw.TwilioEvent, now_ms: int) -> list[Action]:
    call.stats.twilio_messages += 1
    call.last_twilio_ms = now_ms
    match event:
        case tw.Media():
            return _on_media(call, event, now_ms)
        case tw.Mark():
            call.playback.mark_echoed(event.name, at_ms=now_ms)
            return call.tools.poll(call._moment(now_ms)) if call.tools.ending else []
        case tw.Start():
            return _on_start(call, event)
        case tw.Stop():  # after callbot's own hang-up or transfer, the expected end of the stream
            return flush_inbound(call) + call.end(call.tools.stop_reason or "caller hung up")
        case tw.Dtmf():
            return _on_dtmf(call, event, now_ms)
        case tw.Invalid():
            call.stats.invalid_twilio += 1
            log.warning("ignoring Twilio message: %s", event.reason)
    return []


def flush_inbound(call: CallSession) -> list[Action]:
    """Append the caller frames held for a batch, if the session can take them."""
    if call.phase != "active":
        call.caller_audio.drop_held()
        return []
    append = call.caller_audio.flush()
    return [SendRealtime(append)] if append is not None else []


def _on_start(call: CallSession, event: tw.Start) -> list[Action]:
    if call.phase != "awaiting_start":
        log.warning("ignoring a second Twilio start for stream %s", event.stream_sid)
        return []
    params = event.custom_parameters
    call.custom_parameters = params
    call.info = CallInfo(
        call_sid=event.call_sid,
        stream_sid=event.stream_sid,
        account_sid=event.account_sid,
        from_number=params.get("from", ""),
        to_number=params.get("to", ""),
        direction=call.direction,
    )
    call.tools.info = call.info
    if event.encoding != "audio/x-mulaw" or event.sample_rate != 8000:
        return call.end(f"unsupported Twilio media format {event.encoding} {event.sample_rate} Hz")
    call.phase = "connecting"
    return [ConnectRealtime()]


def _on_media(call: CallSession, event: tw.Media, now_ms: int) -> list[Action]:
    call.stats.inbound_frames += 1
    if call.phase != "active":
        # Nothing is relayed before the session confirmed our formats (issue: bridge).
        call.stats.inbound_dropped_not_ready += 1
        return []
    append = call.caller_audio.push(event, now_ms)
    out: list[Action] = [SendRealtime(append)] if append is not None else []
    # Twilio's frames are a 20 ms clock of their own: agent audio that is due goes out on them,
    # so the bridge's pacer need not check a call whose frames keep coming.
    send = call.playback.send_at
    if send is not None and send <= now_ms:
        call.outbound.send_due(now_ms, call.stream_sid, out)
    return out


def _on_dtmf(call: CallSession, event: tw.Dtmf, now_ms: int) -> list[Action]:
    """Keypad digits reach the model as a user text item (docs/protocols.md §4.6)."""
    call.stats.dtmf_digits += event.digit
    if call.phase != "active":
        return []
    item_id = f"dtmf_{len(call.stats.dtmf_digits):04d}_{now_ms}"
    # the audio before the key press goes first, so the model's input stays in order
    out = flush_inbound(call)
    out.append(SendRealtime(rt.user_text(item_id, f"[The caller pressed the key {event.digit}]")))
    return out
