"""callbot.core.call: the per-call state machine, driven with fake time and no sockets.

Every test asserts on what Twilio or the Realtime server would receive. Every `SendRealtime`
the session emits is validated against the SDK's `RealtimeClientEvent` (no unknown fields),
every `SendTwilio` must be exactly a docs/protocols.md §4.3 message, and every server event fed in is
a validated GA event (tests/core_helpers.py).
"""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

import core_helpers as h
import pytest

from callbot.core import realtime_events as rte
from callbot.core import twilio as tw
from callbot.core.actions import (
    Action,
    Checkpoint,
    ConnectRealtime,
    EndCall,
    ReconnectRealtime,
    RunTool,
    SendRealtime,
    SendTwilio,
    UpdateCall,
)
from callbot.core.audio import InboundConverter
from callbot.core.call import CallConfig, CallSession
from callbot.core.realtime import AgentConfig
from callbot.core.recovery import RecoveryPolicy

SILENCE = b"\xff" * 160


def speechlike(n_bytes: int, seed: int = 0) -> bytes:
    """Deterministic mu-law bytes that are not silence (so padding is recognisable)."""
    return bytes(((i * 37 + seed) % 200) + 20 for i in range(n_bytes))


SPEECH_FRAME = speechlike(160)


def pcm24k_tone(ms: int, hz: float = 440.0) -> bytes:
    n = 24 * ms
    return b"".join(struct.pack("<h", int(8000 * math.sin(2 * math.pi * hz * i / 24000))) for i in range(n))


class Call:
    """A CallSession plus a fake Twilio player and a validated record of everything sent."""

    def __init__(self, mode: str = "pcmu", *, greeting: str = "", **config: Any) -> None:
        agent_fields = {k: config.pop(k) for k in list(config) if k in AgentConfig.__dataclass_fields__}
        agent = AgentConfig(
            audio_mode=mode,  # type: ignore[arg-type]
            instructions="You answer the phone for Acme Dental.",
            greeting=greeting,
            **agent_fields,
        )
        self.session = CallSession(CallConfig(agent=agent, **config))
        self.twilio = h.FakeTwilioPlayer()
        self.pending_echoes: list[str] = []  # marks Twilio flushed at once after a clear
        self.now = 0

    # --- feeding events ---
    def _at(self, now_ms: int | None) -> int:
        if now_ms is not None:
            assert now_ms >= self.now, "time goes forward"
            self.now = now_ms
        return self.now

    def _checked(self, actions: list[Action]) -> list[Action]:
        for action in actions:
            assert isinstance(
                action,
                SendTwilio
                | SendRealtime
                | ConnectRealtime
                | EndCall
                | Checkpoint
                | ReconnectRealtime
                | RunTool
                | UpdateCall,
            )
            if isinstance(action, SendRealtime):
                h.assert_client_event(action.event)
            if isinstance(action, SendTwilio):
                for name in self.twilio.receive(action.text, self.now):
                    # Twilio echoes every pending mark at once after a clear (docs/protocols.md §4.4).
                    self.pending_echoes.append(name)
        return actions

    def twilio_in(self, raw: str | bytes, now_ms: int | None = None) -> list[Action]:
        now = self._at(now_ms)
        return self._checked(self.session.receive_twilio(tw.parse(raw), now))

    def realtime_in(self, event: dict[str, Any], now_ms: int | None = None) -> list[Action]:
        now = self._at(now_ms)
        return self._checked(self.session.receive_realtime(rte.parse(event), now))

    def connected(self, now_ms: int | None = None) -> list[Action]:
        now = self._at(now_ms)
        return self._checked(self.session.realtime_connected(now))

    def tick(self, now_ms: int) -> list[Action]:
        now = self._at(now_ms)
        return self._checked(self.session.tick(now))

    def echo_marks(self, now_ms: int) -> list[Action]:
        """Feed back the marks Twilio has echoed by now (played, or flushed by a clear)."""
        now = self._at(now_ms)
        names = self.pending_echoes + self.twilio.echoes_due(now)
        self.pending_echoes = []
        out: list[Action] = []
        for name in names:
            out += self.twilio_in(h.tw_mark(name), now)
        return out

    def run(self, until_ms: int, step_ms: int = 20) -> list[Action]:
        """The bridge's pacer: tick every step, with Twilio's echoes coming back in between."""
        out: list[Action] = []
        for now in range(self.now + step_ms, until_ms + 1, step_ms):
            out += self.tick(now)
            out += self.echo_marks(now)
        return out

    def activate(self, session_in: dict[str, Any] | None = None) -> list[Action]:
        assert self.twilio_in(h.tw_connected()) == []
        assert self.twilio_in(h.tw_start({"token": "t", "from": "+15551230000", "to": "+15559870000"})) == [
            ConnectRealtime()
        ]
        update = self.connected()
        assert len(update) == 1 and isinstance(update[0], SendRealtime)
        fmt = h.PCMU if self.session.config.agent.audio_mode == "pcmu" else h.PCM24K
        assert self.realtime_in(h.session_created(h.PCM24K)) == []
        return self.realtime_in(session_in or h.session_updated(fmt))


def active(mode: str = "pcmu", **config: Any) -> Call:
    call = Call(mode, **config)
    assert call.activate() == []
    assert call.session.phase == "active"
    return call


# --- what the peers receive ---


def to_twilio(actions: list[Action]) -> list[dict[str, Any]]:
    return [json.loads(a.text) for a in actions if isinstance(a, SendTwilio)]


def to_realtime(actions: list[Action]) -> list[dict[str, Any]]:
    return [a.event for a in actions if isinstance(a, SendRealtime)]


def media_bytes(msgs: list[dict[str, Any]]) -> list[bytes]:
    return [base64.b64decode(m["media"]["payload"]) for m in msgs if m["event"] == "media"]


def shape(msgs: list[dict[str, Any]]) -> str:
    """'M' per media, 'k' per mark, 'C' per clear: the order Twilio receives them in."""
    return "".join({"media": "M", "mark": "k", "clear": "C"}[m["event"]] for m in msgs)


def start_turn(call: Call, user: str, assistant: str, response: str, previous: str | None, now: int) -> None:
    """Caller speaks, the server commits it and starts a response with an audio item."""
    assert call.realtime_in(h.speech_started(user, 900), now) == []
    assert call.realtime_in(h.speech_stopped(user, 1800), now + 1) == []
    assert call.realtime_in(h.committed(user, previous), now + 2) == []
    assert call.realtime_in(h.item_added(h.user_audio_item(user), previous), now + 3) == []
    assert call.realtime_in(h.item_done(h.user_audio_item(user), previous), now + 4) == []
    assert call.realtime_in(h.response_created(response), now + 5) == []
    assert call.realtime_in(h.rate_limits_updated(), now + 6) == []
    assert call.realtime_in(h.item_added(h.assistant_audio_item(assistant), user), now + 7) == []


# ================================================================================================
# Phases
# ================================================================================================


def test_start_asks_for_a_realtime_connection_and_records_the_call() -> None:
    call = Call("pcmu")
    assert call.twilio_in(h.tw_connected(), 0) == []
    assert call.session.phase == "awaiting_start"
    actions = call.twilio_in(h.tw_start({"token": "abc", "from": "+15551230000", "to": "+15559870000"}), 5)
    assert actions == [ConnectRealtime()]
    assert call.session.phase == "connecting"
    info = call.session.info
    assert info is not None
    assert (info.call_sid, info.stream_sid, info.account_sid) == (h.CALL_SID, h.STREAM_SID, h.ACCOUNT_SID)
    assert (info.from_number, info.to_number) == ("+15551230000", "+15559870000")
    assert call.session.custom_parameters["token"] == "abc"


def test_a_second_start_is_ignored() -> None:
    call = Call("pcmu")
    assert call.twilio_in(h.tw_start(), 0) == [ConnectRealtime()]
    assert call.twilio_in(h.tw_start(stream_sid="MZother", call_sid="CAother"), 10) == []
    assert call.session.stream_sid == h.STREAM_SID


@pytest.mark.parametrize(
    ("encoding", "rate"), [("audio/l16", 8000), ("audio/x-mulaw", 16000)], ids=["encoding", "rate"]
)
def test_start_with_an_unsupported_media_format_ends_the_call(encoding: str, rate: int) -> None:
    call = Call("pcmu")
    actions = call.twilio_in(h.tw_start(encoding=encoding, sample_rate=rate), 0)
    assert len(actions) == 1 and isinstance(actions[0], EndCall)
    assert "unsupported Twilio media format" in actions[0].reason
    assert call.session.phase == "ended"
    assert call.connected(1) == []


@pytest.mark.parametrize("mode", ["pcm24k", "pcmu"])
def test_realtime_connected_sends_the_ga_session_update(mode: str) -> None:
    call = Call(mode, voice="cedar", transcription_model="gpt-4o-transcribe", transcription_language="en")
    call.twilio_in(h.tw_start(), 0)
    actions = call.connected(100)
    assert call.session.phase == "configuring"
    assert len(actions) == 1
    (event,) = to_realtime(actions)
    assert event["type"] == "session.update"
    session = event["session"]
    fmt = {"type": "audio/pcmu"} if mode == "pcmu" else {"type": "audio/pcm", "rate": 24000}
    assert session["type"] == "realtime"
    assert session["output_modalities"] == ["audio"]
    assert session["instructions"] == "You answer the phone for Acme Dental."
    assert session["audio"]["input"]["format"] == fmt
    assert session["audio"]["output"]["format"] == fmt
    assert session["audio"]["output"]["voice"] == "cedar"
    assert session["audio"]["input"]["transcription"] == {"model": "gpt-4o-transcribe", "language": "en"}
    assert session["audio"]["input"]["noise_reduction"] == {"type": "near_field"}
    assert session["audio"]["input"]["turn_detection"] == {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "create_response": True,
        "interrupt_response": True,
    }
    # Beta field names would be silently ignored by the server (docs/protocols.md §7.3).
    assert "input_audio_format" not in session and "voice" not in session


def test_session_update_with_semantic_vad_and_no_transcription() -> None:
    call = Call(
        "pcmu", vad_type="semantic_vad", vad_eagerness="low", transcription_model=None, noise_reduction=None
    )
    call.twilio_in(h.tw_start(), 0)
    (event,) = to_realtime(call.connected(1))
    audio_in = event["session"]["audio"]["input"]
    assert audio_in["turn_detection"] == {
        "type": "semantic_vad",
        "eagerness": "low",
        "create_response": True,
        "interrupt_response": True,
    }
    assert "transcription" not in audio_in and "noise_reduction" not in audio_in


def test_realtime_connected_before_start_does_nothing() -> None:
    call = Call("pcmu")
    assert call.connected(0) == []
    assert call.session.phase == "awaiting_start"


@pytest.mark.parametrize("mode", ["pcm24k", "pcmu"])
def test_media_before_session_updated_is_dropped_and_counted(mode: str) -> None:
    call = Call(mode)
    assert call.twilio_in(h.tw_media(SILENCE, 0), 0) == []  # before start
    call.twilio_in(h.tw_start(), 10)
    assert call.twilio_in(h.tw_media(SILENCE, 20), 20) == []  # connecting
    call.connected(30)
    assert call.twilio_in(h.tw_media(SILENCE, 40), 40) == []  # configuring
    assert call.session.stats.inbound_dropped_not_ready == 3
    assert call.session.stats.inbound_frames == 3
    fmt = h.PCMU if mode == "pcmu" else h.PCM24K
    call.realtime_in(h.session_updated(fmt), 50)
    (append,) = to_realtime(call.twilio_in(h.tw_media(SILENCE, 60), 60))
    assert append["type"] == "input_audio_buffer.append"
    assert call.session.stats.inbound_dropped_not_ready == 3


@pytest.mark.parametrize(
    ("mode", "in_fmt", "out_fmt"),
    [
        ("pcmu", h.PCM24K, h.PCM24K),  # the server kept its default
        ("pcmu", h.PCMU, h.PCM24K),  # only the input took
        ("pcm24k", h.PCMU, h.PCMU),
        ("pcmu", {"type": "audio/pcma"}, {"type": "audio/pcma"}),
    ],
    ids=["default-kept", "output-wrong", "pcm24k-got-pcmu", "pcma"],
)
def test_session_updated_with_the_wrong_formats_ends_the_call(
    mode: str, in_fmt: dict[str, Any], out_fmt: dict[str, Any]
) -> None:
    call = Call(mode)
    actions = call.activate(h.session_updated(in_fmt, out_fmt))
    assert len(actions) == 1 and isinstance(actions[0], EndCall)
    assert "audio formats" in actions[0].reason
    assert call.session.phase == "ended"
    assert call.session.end_reason == actions[0].reason
    # Nothing is relayed to a misconfigured session.
    assert call.twilio_in(h.tw_media(SPEECH_FRAME, 100), 100) == []


def test_matching_session_updated_activates_and_sends_the_greeting() -> None:
    call = Call("pcmu", greeting="Greet the caller and ask how you can help.")
    actions = call.activate()
    assert call.session.phase == "active"
    (event,) = to_realtime(actions)
    assert len(actions) == 1
    assert event["type"] == "response.create"
    assert event["event_id"] == "evt_greeting"
    instructions = event["response"]["instructions"]
    assert instructions.startswith("You answer the phone for Acme Dental.")
    assert instructions.endswith("Greet the caller and ask how you can help.")


def test_matching_session_updated_without_a_greeting_sends_nothing() -> None:
    call = Call("pcmu")
    assert call.activate() == []
    assert call.session.phase == "active"


def test_a_later_session_updated_does_not_repeat_the_greeting() -> None:
    call = Call("pcmu", greeting="Say hello.")
    assert len(call.activate()) == 1
    assert call.realtime_in(h.session_updated(h.PCMU), 500) == []


def test_session_ready_timeout_ends_the_call() -> None:
    call = Call("pcmu", session_ready_timeout_ms=5000)
    call.twilio_in(h.tw_start(), 0)
    call.connected(1000)
    assert call.tick(5999) == []
    actions = call.tick(6000)
    assert actions == [EndCall("Realtime session was not ready in time")]
    assert call.session.phase == "ended"
    assert call.tick(6020) == []
    assert call.realtime_in(h.session_updated(h.PCMU), 6100) == []
    assert call.session.phase == "ended"


def test_no_timeout_once_the_session_is_ready() -> None:
    # a huge Twilio idle timeout isolates the session-ready deadline from the dead-line check
    call = active(
        "pcmu", session_ready_timeout_ms=5000, recovery=RecoveryPolicy(twilio_idle_timeout_ms=10**9)
    )
    assert call.tick(60_000) == []
    assert call.session.phase == "active"


def test_twilio_stop_ends_the_call_once() -> None:
    call = active("pcmu")
    assert call.twilio_in(h.tw_stop(), 100) == [EndCall("caller hung up")]
    assert call.session.phase == "ended"
    assert call.twilio_in(h.tw_stop(), 120) == []
    assert call.twilio_in(h.tw_media(SPEECH_FRAME, 140), 140) == []


def test_nothing_is_sent_to_twilio_after_stop() -> None:
    # docs/protocols.md §4.5: after `stop`, send nothing. Realtime events still in flight must not
    # produce Twilio messages for a stream that no longer exists.
    call = active("pcmu")
    start_turn(call, "item_u1", "item_a1", "resp_1", None, 0)
    call.realtime_in(h.audio_delta("resp_1", "item_a1", speechlike(1600)), 10)  # Twilio is playing
    assert call.twilio_in(h.tw_stop(), 20) == [EndCall("caller hung up")]
    late = call.realtime_in(h.audio_delta("resp_1", "item_a1", speechlike(1600)), 30)
    late += call.realtime_in(h.audio_done("resp_1", "item_a1"), 31)
    late += call.realtime_in(h.speech_started("item_u2"), 32)
    late += call.tick(40)
    assert to_twilio(late) == []


def test_realtime_drop_reconnects_with_backoff_then_gives_up() -> None:
    call = active("pcmu", recovery=RecoveryPolicy(max_reconnects=2, backoff_ms=(100, 900)))
    assert call.session.realtime_closed("code 1011", 500) == [ReconnectRealtime(100, "code 1011")]
    assert call.session.phase == "reconnecting"
    assert call.session.realtime_closed("again", 510) == []  # already reconnecting: one attempt at a time
    # the new link could not be opened: each failure costs an attempt
    assert call.session.realtime_connect_failed("refused", 700) == [ReconnectRealtime(900, "refused")]
    (end,) = call.session.realtime_connect_failed("refused", 1700)
    assert isinstance(end, EndCall) and "2 reconnects failed" in end.reason
    assert call.session.phase == "ended"


def test_a_reconnected_session_is_configured_and_gets_the_context_back_as_text() -> None:
    call = active("pcmu")
    call.realtime_in(h.item_added(h.user_audio_item("u1"), None), 100)
    call.realtime_in(h.item_done(h.user_audio_item("u1"), None), 110)
    call.realtime_in(h.input_transcription_completed("u1", "My order is 88314."), 120)
    call.realtime_in(h.item_added(h.assistant_audio_item("a1"), "u1"), 130)
    call.realtime_in(h.transcript_done("resp_1", "a1", "Let me check that."), 140)
    (reconnect,) = call.session.realtime_closed("code 1006", 200)
    assert isinstance(reconnect, ReconnectRealtime)
    # caller audio during the outage is not relayed (it would be stale by the time it arrived)
    assert to_realtime(call.twilio_in(h.tw_media(SPEECH_FRAME, 220), 220)) == []
    (update,) = to_realtime(call.session.realtime_connected(400))
    assert update["type"] == "session.update"
    restored = to_realtime(call.realtime_in(h.session_updated(h.PCMU), 450))
    assert [(e["item"]["id"], e["item"]["role"], e["item"]["content"][0]["text"]) for e in restored] == [
        ("u1", "user", "My order is 88314."),
        ("a1", "assistant", "Let me check that."),
    ]
    assert all("previous_item_id" not in e for e in restored)  # appended in order
    assert not any(e["type"] == "response.create" for e in restored)  # no second greeting
    assert call.session.phase == "active" and call.session.stats.reconnects == 1


def test_session_expiry_reconnects_instead_of_hanging_up() -> None:
    call = active("pcmu")
    err = h.error("session_expired", "Your session hit the maximum duration of 60 minutes.")
    (action,) = call.realtime_in(err, 10)
    assert isinstance(action, ReconnectRealtime) and action.reason == "session expired"
    assert call.session.phase == "reconnecting"


def test_rollover_waits_for_a_quiet_moment_before_the_session_limit() -> None:
    policy = RecoveryPolicy(session_max_age_ms=10_000, rollover_grace_ms=5_000, twilio_idle_timeout_ms=10**9)
    call = active("pcmu", recovery=policy)
    call.realtime_in(h.speech_started("u9", 0), 9_000)  # the caller is talking at the deadline
    assert not any(isinstance(a, ReconnectRealtime) for a in call.tick(10_500))
    call.realtime_in(h.speech_stopped("u9", 1500), 11_000)
    (rollover,) = [a for a in call.tick(11_020) if isinstance(a, ReconnectRealtime)]
    assert rollover == ReconnectRealtime(0, "session rollover")
    assert call.session.stats.rollovers == 1 and call.session.stats.reconnects == 0


def test_a_silent_twilio_stream_ends_the_call() -> None:
    call = active("pcmu", recovery=RecoveryPolicy(twilio_idle_timeout_ms=3_000))
    call.twilio_in(h.tw_media(SPEECH_FRAME, 1000), 1000)
    assert call.tick(3_900) == []
    assert call.tick(4_100) == [EndCall("Twilio stream went silent")]


# ================================================================================================
# Inbound audio
# ================================================================================================


def test_pcmu_forwards_the_twilio_payload_unchanged() -> None:
    call = active("pcmu")
    raw = h.tw_media_dict(SPEECH_FRAME, 820, 41)
    (append,) = to_realtime(call.twilio_in(json.dumps(raw), 100))
    assert append == {"type": "input_audio_buffer.append", "audio": raw["media"]["payload"]}


def test_pcm24k_appends_960_bytes_of_pcm_per_160_byte_frame() -> None:
    call = active("pcm24k")
    reference = InboundConverter("pcm24k")
    for i in range(5):
        frame = speechlike(160, seed=i)
        (append,) = to_realtime(call.twilio_in(h.tw_media(frame, 20 * i), 20 * i))
        assert append["type"] == "input_audio_buffer.append"
        pcm = base64.b64decode(append["audio"], validate=True)
        assert len(pcm) == 960
        assert pcm == reference.convert(frame)  # streamed: filter state carried across frames
    assert call.session.stats.inbound_frames == 5


def test_pcm24k_silence_is_appended_as_zero_samples() -> None:
    call = active("pcm24k")
    (append,) = to_realtime(call.twilio_in(h.tw_media(SILENCE, 0), 0))
    assert base64.b64decode(append["audio"]) == b"\x00" * 960


# ================================================================================================
# Outbound audio
# ================================================================================================


@pytest.mark.parametrize("delta", ["not base64!", "w\u00e9ird"], ids=["junk", "not-ascii"])
def test_an_audio_delta_that_does_not_decode_is_dropped_and_the_call_goes_on(delta: str) -> None:
    call = active("pcmu")
    call.realtime_in(h.response_created("resp_1"), 0)
    call.realtime_in(h.item_added(h.assistant_audio_item("item_a1")), 0)
    bad = h.audio_delta("resp_1", "item_a1", b"")
    bad["delta"] = delta
    assert call.realtime_in(bad, 0) == []
    good = to_twilio(call.realtime_in(h.audio_delta("resp_1", "item_a1", speechlike(160)), 20))
    assert media_bytes(good) == [speechlike(160)]


def test_a_twilio_frame_sends_the_agent_audio_that_is_due_as_a_tick_would() -> None:
    """Twilio's frames come every 20 ms: due audio goes out on them, the same messages at the
    same moments as a call paced by ticks alone, and a tick after a frame has nothing left."""
    audio = speechlike(4000)  # 25 frames: 5 under the lead at once, the rest as playback goes on
    by_frames, by_ticks = active("pcmu"), active("pcmu")
    sent: dict[str, list[dict[str, Any]]] = {"frames": [], "ticks": []}
    for name, call in (("frames", by_frames), ("ticks", by_ticks)):
        call.realtime_in(h.response_created("resp_1"), 0)
        call.realtime_in(h.item_added(h.assistant_audio_item("item_a1")), 0)
        sent[name] += to_twilio(call.realtime_in(h.audio_delta("resp_1", "item_a1", audio), 0))
    for now in range(0, 600, 20):
        on_frame = to_twilio(by_frames.twilio_in(h.tw_media(SILENCE, now), now))
        assert by_frames.tick(now) == []
        sent["frames"] += on_frame
        sent["ticks"] += to_twilio(by_ticks.tick(now))
    assert shape(sent["frames"]) == shape(sent["ticks"]) and len(media_bytes(sent["frames"])) > 5
    assert media_bytes(sent["frames"]) == media_bytes(sent["ticks"])
    assert b"".join(media_bytes(sent["frames"])) == audio[: len(b"".join(media_bytes(sent["frames"])))]


def test_outbound_deltas_become_exact_frames_and_marks_paced_by_tick() -> None:
    call = active("pcmu")  # lead 100 ms, a mark every 60 ms
    call.realtime_in(h.response_created("resp_1"), 0)
    call.realtime_in(h.item_added(h.assistant_audio_item("item_a1")), 0)
    audio = speechlike(1000)  # 6 full frames and 40 bytes
    first = to_twilio(call.realtime_in(h.audio_delta("resp_1", "item_a1", audio), 0))
    assert shape(first) == "MMMkMM"  # 100 ms of lead: 5 frames, a mark after 60 ms
    assert all(len(f) == 160 for f in media_bytes(first))
    assert call.tick(0) == []
    second = to_twilio(call.tick(20))
    assert shape(second) == "Mk"  # the 6th frame, marked: nothing more queued
    assert call.tick(40) == []  # the 40-byte remainder waits for more audio
    third = to_twilio(call.realtime_in(h.audio_done("resp_1", "item_a1"), 45))
    assert shape(third) == "Mk"
    sent = media_bytes(first + second + third)
    assert all(len(f) == 160 for f in sent)
    # output_audio.done pads the last frame with mu-law silence.
    assert b"".join(sent) == audio + b"\xff" * 120
    marks = [m["mark"]["name"] for m in first + second + third if m["event"] == "mark"]
    assert len(set(marks)) == 3
    assert all(m["streamSid"] == h.STREAM_SID for m in first + second + third)


def test_outbound_pacing_one_frame_per_tick_for_a_long_reply() -> None:
    call = active("pcmu")
    call.realtime_in(h.response_created("resp_1"), 0)
    call.realtime_in(h.item_added(h.assistant_audio_item("item_a1")), 0)
    audio = speechlike(8000)  # one second
    burst = to_twilio(call.realtime_in(h.audio_delta("resp_1", "item_a1", audio), 0))
    assert len(media_bytes(burst)) == 5
    per_tick = [len(media_bytes(to_twilio(call.tick(t)))) for t in range(20, 1000, 20)]
    assert per_tick == [1] * 45 + [0] * 4
    assert b"".join(call.twilio.received) == audio


def test_small_deltas_are_reframed_to_exact_160_byte_frames() -> None:
    call = active("pcmu")
    call.realtime_in(h.response_created("resp_1"), 0)
    audio = speechlike(1234)
    sent: list[dict[str, Any]] = []
    for i in range(0, len(audio), 97):
        sent += to_twilio(call.realtime_in(h.audio_delta("resp_1", "item_a1", audio[i : i + 97]), i // 97))
    sent += to_twilio(call.realtime_in(h.audio_done("resp_1", "item_a1"), 20))
    for t in range(40, 400, 20):
        sent += to_twilio(call.tick(t))
    frames = media_bytes(sent)
    assert all(len(f) == 160 for f in frames)
    assert b"".join(frames) == audio + b"\xff" * (160 - len(audio) % 160)
    assert call.session.generated_ms("item_a1") == 1234 // 8


def test_pcm24k_output_is_downsampled_to_exact_mulaw_frames() -> None:
    call = active("pcm24k")
    call.realtime_in(h.response_created("resp_1"), 0)
    pcm = pcm24k_tone(500)
    sent: list[dict[str, Any]] = []
    for i in range(0, len(pcm), 4801):  # odd sizes split samples between deltas
        sent += to_twilio(call.realtime_in(h.audio_delta("resp_1", "item_a1", pcm[i : i + 4801]), 0))
    sent += to_twilio(call.realtime_in(h.audio_done("resp_1", "item_a1"), 5))
    for t in range(20, 1000, 20):
        sent += to_twilio(call.tick(t))
    frames = media_bytes(sent)
    assert all(len(f) == 160 for f in frames)
    assert call.session.generated_ms("item_a1") == 500
    # 500 ms of audio plus the filter tail, padded to whole frames: 26 frames.
    assert len(frames) == 26
    assert frames[-1].endswith(b"\xff" * 16)
    assert sent[-1]["event"] == "mark"


def test_marks_follow_their_frames_in_order_across_two_items() -> None:
    call = active("pcmu", playback_lead_ms=1000)
    call.realtime_in(h.response_created("resp_1"), 0)
    msgs = to_twilio(call.realtime_in(h.audio_delta("resp_1", "item_a1", speechlike(320)), 0))
    msgs += to_twilio(call.realtime_in(h.audio_delta("resp_1", "item_a2", speechlike(480, 3)), 1))
    msgs += to_twilio(call.realtime_in(h.audio_done("resp_1", "item_a2"), 2))
    assert shape(msgs) == "MMk" + "MMMk"
    assert media_bytes(msgs) == [speechlike(320)[:160], speechlike(320)[160:]] + [
        speechlike(480, 3)[i : i + 160] for i in (0, 160, 320)
    ]


# ================================================================================================
# Transcripts, usage, checkpoints
# ================================================================================================


def test_two_turns_with_transcripts_on_both_sides() -> None:
    call = active("pcmu")
    # Turn 1: the caller's transcript arrives only after response.done (docs/protocols.md §10.6).
    start_turn(call, "item_u1", "item_a1", "resp_1", None, 1000)
    call.realtime_in(h.transcript_delta("resp_1", "item_a1", "Sure, "), 1010)
    call.realtime_in(h.audio_delta("resp_1", "item_a1", speechlike(800)), 1011)
    call.realtime_in(h.transcript_delta("resp_1", "item_a1", "what day?"), 1012)
    call.realtime_in(h.audio_done("resp_1", "item_a1"), 1013)
    call.realtime_in(h.transcript_done("resp_1", "item_a1", "Sure, what day?"), 1014)
    a1_done = h.assistant_audio_item("item_a1", "Sure, what day?", "completed")
    assert call.realtime_in(h.item_done(a1_done, "item_u1"), 1015) == []
    done = call.realtime_in(h.response_done("resp_1", usage_=h.usage(500, 100), output=[a1_done]), 1016)
    assert done == [Checkpoint()]
    assert call.session.conversation.transcript()[0].status == "pending"
    late = call.realtime_in(h.input_transcription_completed("item_u1", "I need to move my booking."), 1500)
    assert late == [Checkpoint()]
    call.run(2000)
    # Turn 2: the caller's transcript arrives before the reply.
    start_turn(call, "item_u2", "item_a2", "resp_2", "item_a1", 3000)
    assert call.realtime_in(h.input_transcription_completed("item_u2", "Friday."), 3010) == [Checkpoint()]
    call.realtime_in(h.audio_delta("resp_2", "item_a2", speechlike(800)), 3011)
    call.realtime_in(h.transcript_done("resp_2", "item_a2", "Done, see you Friday."), 3012)
    call.realtime_in(h.audio_done("resp_2", "item_a2"), 3013)
    a2_done = h.assistant_audio_item("item_a2", "Done, see you Friday.", "completed")
    call.realtime_in(h.item_done(a2_done, "item_u2"), 3014)
    assert call.realtime_in(h.response_done("resp_2", usage_=h.usage(800, 120)), 3015) == [Checkpoint()]

    transcript = call.session.conversation.transcript()
    assert [(e.item_id, e.role, e.text, e.status, e.interrupted) for e in transcript] == [
        ("item_u1", "user", "I need to move my booking.", "complete", False),
        ("item_a1", "assistant", "Sure, what day?", "complete", False),
        ("item_u2", "user", "Friday.", "complete", False),
        ("item_a2", "assistant", "Done, see you Friday.", "complete", False),
    ]
    usage = call.session.conversation.usage
    assert (usage.responses, usage.input_tokens, usage.output_tokens) == (2, 1300, 220)
    assert call.session.conversation.context_tokens == 920


def test_transcription_failure_leaves_the_turn_without_text() -> None:
    call = active("pcmu")
    start_turn(call, "item_u1", "item_a1", "resp_1", None, 100)
    assert call.realtime_in(h.input_transcription_failed("item_u1"), 200) == []
    entry = call.session.conversation.transcript()[0]
    assert (entry.item_id, entry.text, entry.status) == ("item_u1", None, "failed")


def test_out_of_band_responses_do_not_touch_call_state() -> None:
    call = active("pcmu")
    start_turn(call, "item_u1", "item_a1", "resp_1", None, 100)
    summary = {"purpose": "summary"}
    assert call.realtime_in(h.response_created("resp_sum", metadata=summary), 200) == []
    assert (
        call.realtime_in(h.response_done("resp_sum", usage_=h.usage(9000, 300), metadata=summary), 300) == []
    )
    assert call.session.conversation.usage.responses == 0
    # resp_1 is still the active response: a barge-in cancels it.
    call.realtime_in(h.audio_delta("resp_1", "item_a1", speechlike(1600)), 310)
    cancels = [
        e for e in to_realtime(call.realtime_in(h.speech_started("item_u2"), 330)) if "cancel" in e["type"]
    ]
    assert cancels == [{"type": "response.cancel", "event_id": "evt_cancel_resp_1", "response_id": "resp_1"}]


def test_deleted_items_leave_the_context_but_stay_in_the_transcript() -> None:
    call = active("pcmu")
    start_turn(call, "item_u1", "item_a1", "resp_1", None, 100)
    assert call.realtime_in(h.item_deleted("item_u1"), 200) == []
    assert call.session.conversation.context == ["item_a1"]
    assert [e.item_id for e in call.session.conversation.transcript()] == ["item_u1", "item_a1"]


def test_item_done_for_an_item_never_added_is_recorded() -> None:
    call = active("pcmu")
    call.realtime_in(h.item_done(h.user_text_item("item_t", "hello"), None), 100)
    assert [(e.item_id, e.text) for e in call.session.conversation.transcript()] == [("item_t", "hello")]


# ================================================================================================
# Barge-in
# ================================================================================================


def playing_reply(call: Call, until_ms: int) -> bytes:
    """resp_1 / item_a1: two seconds of audio generated at t=0, played until `until_ms`."""
    start_turn(call, "item_u1", "item_a1", "resp_1", None, 0)
    audio = speechlike(16000)
    call.realtime_in(h.transcript_delta("resp_1", "item_a1", "Your appointment is on Friday "), 10)
    call.realtime_in(h.audio_delta("resp_1", "item_a1", audio), 10)
    call.realtime_in(h.transcript_delta("resp_1", "item_a1", "at three in the afternoon."), 11)
    call.run(until_ms)
    return audio


def test_barge_in_clears_twilio_cancels_and_truncates_at_the_heard_ms() -> None:
    call = active("pcmu")
    playing_reply(call, 300)
    heard_ms = call.twilio.heard_bytes // 8  # what Twilio's echoes say was played
    assert 240 <= heard_ms <= 300
    actions = call.realtime_in(h.speech_started("item_u2", 2500), 310)
    assert to_twilio(actions) == [{"event": "clear", "streamSid": h.STREAM_SID}]
    assert to_realtime(actions) == [
        {"type": "response.cancel", "event_id": "evt_cancel_resp_1", "response_id": "resp_1"},
        {
            "type": "conversation.item.truncate",
            "event_id": "evt_truncate_item_a1",
            "item_id": "item_a1",
            "content_index": 0,
            "audio_end_ms": heard_ms,
        },
    ]
    assert isinstance(actions[0], SendTwilio)  # Twilio is cleared first: the caller hears it soonest
    turn = call.session.conversation.transcript()[1]
    assert turn.interrupted and turn.heard_ms == heard_ms
    assert turn.text is not None and turn.text.endswith("…")
    assert "Friday at three in the afternoon" not in turn.text
    assert call.session.stats.barge_ins == 1


def test_after_barge_in_cleared_marks_and_late_deltas_change_nothing() -> None:
    call = active("pcmu")
    playing_reply(call, 300)
    call.realtime_in(h.speech_started("item_u2", 2500), 310)
    heard = call.session.conversation.transcript()[1].heard_ms
    text = call.session.conversation.transcript()[1].text
    received = len(call.twilio.received)
    # Twilio echoes the discarded marks at once; they must not count as heard.
    assert call.echo_marks(311) == []
    # Deltas of the cancelled response still in flight are dropped.
    late = call.realtime_in(h.audio_delta("resp_1", "item_a1", speechlike(3200)), 320)
    late += call.realtime_in(h.transcript_delta("resp_1", "item_a1", " Anything else?"), 321)
    late += call.realtime_in(h.audio_done("resp_1", "item_a1"), 322)
    late += call.run(1000)
    assert to_twilio(late) == [] and len(call.twilio.received) == received
    assert call.session.stats.late_deltas_dropped == 1
    assert call.session.conversation.transcript()[1].heard_ms == heard
    assert call.session.conversation.transcript()[1].text == text
    cancelled = call.realtime_in(h.response_done("resp_1", "cancelled", reason="turn_detected"), 1100)
    assert cancelled == [Checkpoint()]
    # A second speech_started with nothing playing does nothing.
    assert call.realtime_in(h.speech_started("item_u3", 4000), 1200) == []


def test_a_new_response_after_barge_in_plays_normally() -> None:
    call = active("pcmu")
    playing_reply(call, 300)
    call.realtime_in(h.speech_started("item_u2", 2500), 310)
    call.echo_marks(311)
    call.realtime_in(h.response_done("resp_1", "cancelled", reason="turn_detected"), 400)
    start_turn(call, "item_u2", "item_a2", "resp_2", "item_a1", 1000)
    audio = speechlike(800, seed=9)
    before = len(call.twilio.received)
    msgs = to_twilio(call.realtime_in(h.audio_delta("resp_2", "item_a2", audio), 1010))
    assert shape(msgs) == "MMMkMMk"  # 5 frames, marks after 60 ms and at the end
    msgs += to_twilio(call.realtime_in(h.audio_done("resp_2", "item_a2"), 1011))
    call.run(1300)
    assert b"".join(call.twilio.received[before:]) == audio
    # The new item's echoes count: the next barge-in would truncate it at what was heard.
    assert call.session.playback.heard_ms("item_a2") == 100
    assert not call.session.playback.is_playing(1300)


def test_barge_in_after_the_response_finished_clears_and_truncates_without_cancel() -> None:
    call = active("pcmu")
    playing_reply(call, 100)
    call.realtime_in(h.audio_done("resp_1", "item_a1"), 101)
    call.realtime_in(h.response_done("resp_1", usage_=h.usage()), 102)
    call.run(500)
    heard_ms = call.twilio.heard_bytes // 8
    actions = call.realtime_in(h.speech_started("item_u2", 2500), 510)
    assert to_twilio(actions) == [{"event": "clear", "streamSid": h.STREAM_SID}]
    assert [e["type"] for e in to_realtime(actions)] == ["conversation.item.truncate"]
    assert to_realtime(actions)[0]["audio_end_ms"] == heard_ms


def test_barge_in_truncate_is_clamped_to_the_generated_audio() -> None:
    # 200 bytes (25 ms) generated, padded to two frames (40 ms) for Twilio. If the echo of the
    # padded frame's mark is seen while the first is still pending, heard (40) > generated (25):
    # the truncate must not ask for more audio than exists (docs/protocols.md §10.4).
    call = active("pcmu")
    start_turn(call, "item_u1", "item_a1", "resp_1", None, 0)
    first = to_twilio(call.realtime_in(h.audio_delta("resp_1", "item_a1", speechlike(200)), 10))
    second = to_twilio(call.realtime_in(h.audio_done("resp_1", "item_a1"), 11))
    assert shape(first) == "Mk" and shape(second) == "Mk"
    call.twilio_in(h.tw_mark(second[1]["mark"]["name"]), 15)
    actions = call.realtime_in(h.speech_started("item_u2"), 20)
    (truncate,) = [e for e in to_realtime(actions) if e["type"] == "conversation.item.truncate"]
    assert truncate["audio_end_ms"] == 25
    assert call.session.conversation.transcript()[1].heard_ms == 25


def test_barge_in_before_any_mark_was_echoed_truncates_at_zero() -> None:
    call = active("pcmu")
    start_turn(call, "item_u1", "item_a1", "resp_1", None, 0)
    call.realtime_in(h.transcript_delta("resp_1", "item_a1", "Hello there"), 10)
    call.realtime_in(h.audio_delta("resp_1", "item_a1", speechlike(4000)), 12)
    actions = call.realtime_in(h.speech_started("item_u2"), 30)
    assert shape(to_twilio(actions)) == "C"
    (truncate,) = [e for e in to_realtime(actions) if e["type"] == "conversation.item.truncate"]
    assert truncate["audio_end_ms"] == 0
    assert call.session.conversation.transcript()[1].text == ""


def test_barge_in_in_pcm24k_mode_truncates_on_the_items_own_timeline() -> None:
    call = active("pcm24k")
    start_turn(call, "item_u1", "item_a1", "resp_1", None, 0)
    call.realtime_in(h.audio_delta("resp_1", "item_a1", pcm24k_tone(1000)), 10)
    call.run(400)
    heard_ms = call.twilio.heard_bytes // 8
    assert 300 <= heard_ms <= 400
    actions = call.realtime_in(h.speech_started("item_u2"), 410)
    (truncate,) = [e for e in to_realtime(actions) if e["type"] == "conversation.item.truncate"]
    assert truncate["audio_end_ms"] == heard_ms
    assert shape(to_twilio(actions)) == "C"


def test_speech_started_with_nothing_playing_does_nothing() -> None:
    call = active("pcmu")
    assert call.realtime_in(h.speech_started("item_u1", 100), 100) == []
    assert call.session.stats.barge_ins == 0


def test_speech_started_after_the_reply_was_fully_heard_does_nothing() -> None:
    call = active("pcmu")
    start_turn(call, "item_u1", "item_a1", "resp_1", None, 0)
    call.realtime_in(h.audio_delta("resp_1", "item_a1", speechlike(800)), 10)
    call.realtime_in(h.audio_done("resp_1", "item_a1"), 11)
    call.realtime_in(h.response_done("resp_1"), 12)
    call.run(400)
    assert call.realtime_in(h.speech_started("item_u2", 5000), 410) == []
    assert not call.session.conversation.transcript()[1].interrupted


# ================================================================================================
# Odd input: invalid Twilio messages, unknown Realtime events, errors, DTMF
# ================================================================================================


def test_invalid_twilio_messages_are_counted_and_ignored() -> None:
    call = active("pcmu")
    assert call.twilio_in("not json", 10) == []
    assert call.twilio_in(json.dumps({"event": "media", "media": {"payload": "@@"}}), 20) == []
    assert call.twilio_in(json.dumps(["media"]), 30) == []
    assert call.session.stats.invalid_twilio == 3
    assert call.session.phase == "active"
    (append,) = to_realtime(call.twilio_in(h.tw_media(SPEECH_FRAME), 40))
    assert append["type"] == "input_audio_buffer.append"


def test_unknown_realtime_events_are_counted_and_ignored() -> None:
    call = active("pcmu")
    assert call.realtime_in(h.output_audio_buffer_started("resp_1"), 10) == []
    assert call.realtime_in(h.output_audio_buffer_started("resp_2"), 20) == []
    assert call.session.stats.unknown_realtime == 2
    assert call.session.phase == "active"


def test_known_but_unused_realtime_events_are_not_unknown() -> None:
    call = active("pcmu")
    for event in (
        h.rate_limits_updated(),
        h.speech_stopped("item_u1"),
        h.committed("item_u1"),
        h.item_truncated("item_a1", 100),
        h.session_created(h.PCMU),
    ):
        assert call.realtime_in(event, 10) == []
    assert call.session.stats.unknown_realtime == 0


@pytest.mark.parametrize("code", ["response_cancel_not_active", "conversation_already_has_active_response"])
def test_benign_realtime_errors_are_ignored(code: str) -> None:
    call = active("pcmu")
    assert call.realtime_in(h.error(code, "harmless race", client_event_id="evt_cancel_resp_1"), 10) == []
    assert call.session.stats.realtime_errors == 0
    assert call.session.phase == "active"


def test_other_realtime_errors_are_counted_but_do_not_end_the_call() -> None:
    call = active("pcmu")
    err = h.error(None, "Audio content of 120ms is already shorter than 300ms", client_event_id="evt_t")
    assert call.realtime_in(err, 10) == []
    assert call.session.stats.realtime_errors == 1
    assert call.session.phase == "active"


def test_dtmf_becomes_a_user_text_item() -> None:
    call = active("pcmu")
    (event,) = to_realtime(call.twilio_in(h.tw_dtmf("5"), 1234))
    assert event["type"] == "conversation.item.create"
    item = event["item"]
    assert (item["type"], item["role"]) == ("message", "user")
    assert len(item["content"]) == 1 and item["content"][0]["type"] == "input_text"
    assert "5" in item["content"][0]["text"]
    (second,) = to_realtime(call.twilio_in(h.tw_dtmf("#"), 1300))
    assert "#" in second["item"]["content"][0]["text"]
    assert second["item"]["id"] != item["id"]
    assert call.session.stats.dtmf_digits == "5#"


def test_dtmf_before_the_session_is_ready_is_recorded_but_not_sent() -> None:
    call = Call("pcmu")
    call.twilio_in(h.tw_start(), 0)
    assert call.twilio_in(h.tw_dtmf("1"), 10) == []
    assert call.session.stats.dtmf_digits == "1"


@pytest.mark.parametrize("mode", ["pcm24k", "pcmu"])
def test_batched_inbound_frames_carry_the_same_audio_as_one_append_per_frame(mode: str) -> None:
    frames = [bytes([(n * 7 + k) % 256 for k in range(160)]) for n in range(6)]

    def sent_audio(batch: int) -> list[bytes]:
        call = active(mode, inbound_batch_frames=batch)
        appends = []
        for n, frame in enumerate(frames):
            appends += to_realtime(call.twilio_in(h.tw_media(frame, 20 * n), 20 * n))
        return [base64.b64decode(a["audio"]) for a in appends]

    one_by_one, in_threes = sent_audio(1), sent_audio(3)
    assert len(one_by_one) == 6 and len(in_threes) == 2
    assert b"".join(in_threes) == b"".join(one_by_one)  # same samples: the filter state carries over


# ================================================================================================
# When things were said (issue #20): caller turns from the VAD's audio times, assistant turns
# from when their audio played
# ================================================================================================


def active_at(now_ms: int, mode: str = "pcmu", **config: Any) -> Call:
    """A call whose Realtime session became ready `now_ms` into the call (its audio clock's 0)."""
    call = Call(mode, **config)
    call.now = now_ms
    assert call.activate() == []
    return call


def stream_caller_audio(call: Call, until_ms: int) -> None:
    """Twilio's 20 ms frames, in real time, up to `until_ms` of call time."""
    for now in range(call.now + 20, until_ms + 1, 20):
        call.twilio_in(h.tw_media(SPEECH_FRAME, now), now)


def caller_turn(
    call: Call, item_id: str, audio_start_ms: int, audio_end_ms: int, previous: str | None
) -> None:
    """The VAD's events arrive after the audio they describe, as the server sends them."""
    call.realtime_in(h.speech_started(item_id, audio_start_ms))
    stream_caller_audio(call, call.now + 700)
    call.realtime_in(h.speech_stopped(item_id, audio_end_ms))
    call.realtime_in(h.committed(item_id, previous))
    call.realtime_in(h.item_added(h.user_audio_item(item_id), previous))
    call.realtime_in(h.item_done(h.user_audio_item(item_id), previous))


def entry(call: Call, item_id: str) -> Any:
    return next(e for e in call.session.conversation.transcript() if e.item_id == item_id)


def test_a_caller_turn_is_stamped_when_it_was_said_not_when_its_item_arrived() -> None:
    call = active_at(500)  # the session's audio clock starts half a second into the call
    stream_caller_audio(call, 3000)  # 2.5 s of audio appended
    # audio_start_ms includes the 300 ms prefix padding: the voice began at audio 1500 ms
    caller_turn(call, "item_u1", audio_start_ms=1200, audio_end_ms=2800, previous=None)
    call.realtime_in(h.input_transcription_completed("item_u1", "I'd like to move my appointment."), 4500)
    turn = entry(call, "item_u1")
    assert (turn.started_ms, turn.ended_ms) == (2000, 3300)
    assert turn.at_ms > 3300  # the item arrived after the speech stopped


def test_a_new_session_starts_a_new_audio_clock() -> None:
    call = active_at(0, recovery=RecoveryPolicy(twilio_idle_timeout_ms=10**9))
    stream_caller_audio(call, 10_000)
    (reconnect,) = call.session.realtime_closed("code 1006", 10_000)
    assert isinstance(reconnect, ReconnectRealtime)
    call.connected(10_200)
    call.realtime_in(h.session_created(h.PCM24K), 10_300)
    assert call.realtime_in(h.session_updated(h.PCMU), 10_400) == []
    stream_caller_audio(call, 12_000)
    caller_turn(call, "item_u9", audio_start_ms=200, audio_end_ms=1200, previous=None)
    turn = entry(call, "item_u9")
    assert (turn.started_ms, turn.ended_ms) == (10_900, 11_600)  # 10_400 + 500 and + 1200


def test_inbound_batching_does_not_shift_the_caller_clock() -> None:
    call = active_at(500, inbound_batch_frames=3)
    stream_caller_audio(call, 3000)  # the last append went at 3000 with 2.4 s appended (120 frames)
    caller_turn(call, "item_u1", audio_start_ms=1200, audio_end_ms=2200, previous=None)
    turn = entry(call, "item_u1")
    assert (turn.started_ms, turn.ended_ms) == (2000, 2700)


def test_an_assistant_turn_spans_the_time_its_audio_played() -> None:
    call = active_at(0)
    caller_turn(call, "item_u1", audio_start_ms=100, audio_end_ms=600, previous=None)
    call.realtime_in(h.response_created("resp_1"), 1000)
    call.realtime_in(h.item_added(h.assistant_audio_item("item_a1"), "item_u1"), 1010)
    call.realtime_in(h.audio_delta("resp_1", "item_a1", speechlike(8000)), 1200)  # 1 s of audio
    call.realtime_in(h.audio_done("resp_1", "item_a1"), 1210)
    # so far: what was sent, at most 100 ms (the playback lead) ahead of the clock
    assert (entry(call, "item_a1").started_ms, entry(call, "item_a1").ended_ms) == (1200, 1320)
    call.run(2500)
    turn = entry(call, "item_a1")
    assert (turn.at_ms, turn.started_ms, turn.ended_ms) == (1010, 1200, 2200)


def test_a_barged_in_assistant_turn_ends_when_the_caller_cut_it_off() -> None:
    call = active_at(0)
    playing_reply(call, 600)  # 2 s of audio from t=10, paced out until 600
    call.realtime_in(h.speech_started("item_u2", 2500), 610)
    call.run(3000)
    turn = entry(call, "item_a1")
    assert turn.interrupted
    assert (turn.started_ms, turn.ended_ms) == (10, 610)


def test_dtmf_turns_have_no_speech_times_and_show_when_they_arrived() -> None:
    call = active_at(0)
    (create,) = to_realtime(call.twilio_in(h.tw_dtmf("5"), 1200))
    item = create["item"]
    call.realtime_in(h.item_added(item, None), 1230)
    turn = entry(call, item["id"])
    assert (turn.started_ms, turn.ended_ms, turn.spoken_at_ms) == (None, None, 1230)


def test_speech_the_server_never_commits_leaves_nothing_behind() -> None:
    call = active_at(0)
    stream_caller_audio(call, 2000)
    for n in range(20):  # coughs: speech_started without an item
        call.realtime_in(h.speech_started(f"item_cough{n}", 100))
    assert len(call.session.conversation._speech) <= 8
    assert call.session.conversation.transcript() == ()


# ================================================================================================
# When the bridge must wake the call, and a refused stream
# ================================================================================================


def test_next_wake_ms_is_when_the_next_message_fits_under_the_lead() -> None:
    call = active("pcmu", playback_lead_ms=100)
    assert call.session.next_wake_ms() is None  # nothing to send: the deadlines can wait
    call.realtime_in(h.response_created("resp_1"), 0)
    call.realtime_in(h.audio_delta("resp_1", "item_a1", speechlike(1600)), 0)  # 200 ms, 100 sent
    wake = call.session.next_wake_ms()
    assert wake is not None and wake > 0
    assert to_twilio(call.tick(wake - 1)) == []  # waking earlier would send nothing
    assert media_bytes(to_twilio(call.tick(wake)))  # and at the wake-up the next frame goes
    call.run(400)
    assert call.session.next_wake_ms() is None


def test_next_wake_ms_covers_caller_frames_held_for_a_batch() -> None:
    call = active("pcmu", inbound_batch_frames=3)
    assert call.twilio_in(h.tw_media(SPEECH_FRAME), 100) == []
    assert call.session.next_wake_ms() == 100 + 2 * 3 * 20  # the batch's wait, then sent anyway
    (append,) = to_realtime(call.tick(220))
    assert append["type"] == "input_audio_buffer.append"
    assert call.session.next_wake_ms() is None


def test_an_ended_call_never_needs_a_wake_up() -> None:
    call = active("pcmu")
    call.realtime_in(h.audio_delta("resp_1", "item_a1", speechlike(8000)), 0)
    call.twilio_in(h.tw_stop(), 10)
    assert call.session.next_wake_ms() is None


def test_a_refused_stream_ends_without_a_record_of_the_call() -> None:
    call = Call("pcmu")
    start = tw.parse(h.tw_start())
    assert isinstance(start, tw.Start)
    assert call.session.refuse_stream("bad stream token") == [EndCall("bad stream token")]
    assert (call.session.phase, call.session.end_reason, call.session.info) == (
        "ended",
        "bad stream token",
        None,
    )
    assert call.session.receive_twilio(start, 0) == []  # nothing opens afterwards
    assert call.connected(10) == []
