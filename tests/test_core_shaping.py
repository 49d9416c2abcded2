"""Larger messages on both legs (issue #14), driven with fake time and no sockets.

Outbound: media messages of up to `media_message_ms` of whole frames, one mark after each, a lead
deep enough to ride out a stalled leg; the heard position stays exact (the end of the last message
whose mark was echoed as played) and `clear` still throws away everything unplayed. Inbound:
caller frames batched into larger appends, flushed when the stream stops, before a key press,
and when Twilio's frames stop mid-batch. The shape `callbot serve` uses is the one Settings gives.
"""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

import core_helpers as h
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callbot.compose import call_config
from callbot.core import realtime_events as rte
from callbot.core import twilio as tw
from callbot.core.actions import Action, EndCall, SendRealtime, SendTwilio
from callbot.core.audio import InboundConverter
from callbot.core.call import CallConfig, CallSession
from callbot.core.playback import BYTES_PER_MS, FRAME_BYTES, FRAME_MS, OutboundMessage, PlaybackTracker
from callbot.core.realtime import AgentConfig
from callbot.settings import Settings

SERVE = Settings(  # type: ignore[call-arg]
    _env_file=None, public_url="https://callbot.example.com", openai_api_key="x", twilio_auth_token="x"
)
LEAD, MESSAGE = SERVE.playback_lead_ms, SERVE.media_message_ms


def frames(n: int, fill: int = 0x55) -> list[bytes]:
    return [bytes([fill]) * FRAME_BYTES for _ in range(n)]


def serve_tracker(prebuffer_ms: int = 0) -> PlaybackTracker:
    return PlaybackTracker(LEAD, SERVE.mark_interval_ms, message_ms=MESSAGE, prebuffer_ms=prebuffer_ms)


def send(tracker: PlaybackTracker, twilio: h.FakeTwilioPlayer, now_ms: int) -> list[OutboundMessage]:
    sent = tracker.take_messages(now_ms)
    for message in sent:
        twilio.frame(message.audio, now_ms)
        if message.mark is not None:
            twilio.mark(message.mark, now_ms)
    return sent


def echo(tracker: PlaybackTracker, twilio: h.FakeTwilioPlayer, now_ms: int) -> None:
    for name in twilio.echoes_due(now_ms):
        assert tracker.mark_echoed(name)


# ----- the serving shape -------------------------------------------------------------------------


def test_serve_defaults_send_200_ms_messages_600_ms_ahead_and_60_ms_appends() -> None:
    config = call_config(SERVE)
    assert (config.playback_lead_ms, config.media_message_ms, config.mark_interval_ms) == (600, 200, 200)
    assert config.inbound_batch_frames == 3
    # Riding out a 300 ms stall needs the buffer's low point (lead - message - a tick) above it.
    assert config.playback_lead_ms - config.media_message_ms - FRAME_MS > 300


def test_a_message_longer_than_the_lead_is_refused() -> None:
    with pytest.raises(ValueError, match="must not exceed"):
        Settings(_env_file=None, playback_lead_ms=100, media_message_ms=200)  # type: ignore[call-arg]


# ----- message shaping ---------------------------------------------------------------------------


def test_deltas_go_out_as_they_arrive_until_the_lead_fills_then_whole_messages_top_it_up() -> None:
    tracker = serve_tracker()
    twilio = h.FakeTwilioPlayer()
    sizes: list[tuple[int, int]] = []
    for now in range(0, 3500, 5):  # 2.5 s of audio as 100 ms deltas at 4x real time; 20 ms ticks
        if now % 25 == 0 and now < 625:
            tracker.enqueue("item_A", frames(5))
            sizes += [(now, m.frames) for m in send(tracker, twilio, now)]
        if now % FRAME_MS == 0:
            sizes += [(now, m.frames) for m in send(tracker, twilio, now)]
            echo(tracker, twilio, now)
    # Per delta while the lead fills (the first reaches the caller at once), then 200 ms messages.
    assert sizes[:8] == [(0, 5), (25, 5), (50, 5), (75, 5), (100, 5), (125, 5), (150, 5), (300, 10)]
    assert {n for _, n in sizes[7:]} == {10}
    assert sum(n for _, n in sizes) == 125
    steady = [t for t, _ in sizes[7:]]
    assert {b - a for a, b in itertools.pairwise(steady)} == {200}  # one message per 200 ms
    assert len(twilio.marks_sent) == len(sizes) == 16  # one mark per message; 125 frames before
    assert tracker.heard_ms("item_A") == 2500


def test_a_message_never_spans_two_items_and_each_ends_with_a_mark_at_its_items_position() -> None:
    tracker = serve_tracker()
    tracker.enqueue("item_A", frames(13, 0x11))
    tracker.enqueue("item_B", frames(4, 0x22))
    sent = tracker.take_messages(0)
    assert [(m.item_id, m.frames) for m in sent] == [("item_A", 10), ("item_A", 3), ("item_B", 4)]
    assert all(m.mark is not None and len(m.audio) == m.frames * FRAME_BYTES for m in sent)
    assert sent[1].audio == bytes([0x11]) * 3 * FRAME_BYTES and sent[2].audio == bytes([0x22]) * 640
    for message in sent:
        assert message.mark is not None
        tracker.mark_echoed(message.mark)
    assert (tracker.heard_ms("item_A"), tracker.heard_ms("item_B")) == (260, 80)


def test_a_full_message_waits_until_it_fits_under_the_lead() -> None:
    tracker = serve_tracker()
    tracker.enqueue("item_A", frames(100))
    assert [m.frames for m in tracker.take_messages(0)] == [10, 10, 10]  # 600 ms ahead
    for now in range(20, 200, 20):
        assert tracker.take_messages(now) == [], now  # less than 200 ms of room
    assert [m.frames for m in tracker.take_messages(200)] == [10]
    # A late tick does not burst more than the lead either.
    assert [m.frames for m in tracker.take_messages(2000)] == [10, 10, 10]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=90),  # ms until the next event
            st.integers(min_value=0, max_value=12),  # frames of a delta (0: just a tick)
            st.booleans(),  # the next item starts
        ),
        min_size=1,
        max_size=60,
    ),
    st.sampled_from([(600, 200, 200), (500, 100, 100), (300, 200, 200), (100, 20, 60)]),
)
def test_messages_are_whole_frames_marks_exact_and_the_buffer_bounded(
    steps: list[tuple[int, int, bool]], shape: tuple[int, int, int]
) -> None:
    lead, message_ms, mark_ms = shape
    tracker = PlaybackTracker(lead, mark_ms, message_ms=message_ms)
    twilio = h.FakeTwilioPlayer()
    items = ["item_0"]
    enqueued: list[bytes] = []
    now = 0
    for advance, n, next_item in steps:
        now += advance
        if next_item:
            items.append(f"item_{len(items)}")
        audio = [bytes([len(enqueued) + i & 0xFF]) * FRAME_BYTES for i in range(n)]
        enqueued += audio
        tracker.enqueue(items[-1], audio)
        for m in send(tracker, twilio, now):
            assert 1 <= m.frames <= message_ms // FRAME_MS and len(m.audio) == m.frames * FRAME_BYTES
            assert m.mark is not None or mark_ms > message_ms
        assert twilio.play_end_ms - now < lead + FRAME_MS
        echo(tracker, twilio, now)
        # Heard is exactly the item audio before the last mark played, never more than was sent.
        for item in items:
            assert tracker.heard_ms(item) <= tracker.sent_ms(item)
    for later in range(now, now + 60_000, 20):
        send(tracker, twilio, later)
        echo(tracker, twilio, later)
        if not tracker.queued_frames and not tracker.is_playing(later):
            break
    assert b"".join(twilio.received) == b"".join(enqueued)
    assert sum(tracker.heard_ms(i) for i in items) * BYTES_PER_MS == len(b"".join(enqueued))


# ----- clear and heard ---------------------------------------------------------------------------


def test_clear_mid_message_heard_is_the_end_of_the_last_message_played() -> None:
    tracker = serve_tracker()
    twilio = h.FakeTwilioPlayer()
    tracker.enqueue("item_A", frames(100))
    for now in range(0, 520, 20):
        send(tracker, twilio, now)
        echo(tracker, twilio, now)
    # 500 ms played: messages 1 and 2 (400 ms) confirmed, the third half way through.
    assert tracker.heard_ms("item_A") == 400
    cut = tracker.interrupt(500)
    assert (cut.item_id, cut.heard_ms, cut.twilio_had_audio) == ("item_A", 400, True)
    # Twilio echoes the pending marks at once after the clear: discarded audio, not heard.
    flushed = twilio.clear(500)
    assert len(flushed) >= 1
    assert [tracker.mark_echoed(name) for name in flushed] == [False] * len(flushed)
    assert tracker.heard_ms("item_A") == 400
    assert tracker.queued_frames == 0 and not tracker.is_playing(500)


# ----- a stalled caller leg ----------------------------------------------------------------------


class StalledTwilio(h.FakeTwilioPlayer):
    """Twilio behind a leg that stops delivering for a while: what is sent meanwhile arrives at
    the end of the stall, all at once. Counts the ms the buffer ran dry inside the reply."""

    def __init__(self, stall_from: int, stall_ms: int) -> None:
        super().__init__()
        self.stall = (stall_from, stall_from + stall_ms)
        self.dry_ms = 0

    def frame(self, audio: bytes, now_ms: int) -> None:
        arrives = self.stall[1] if self.stall[0] <= now_ms < self.stall[1] else now_ms
        if self.received and arrives > self.play_end_ms:
            self.dry_ms += arrives - self.play_end_ms
        super().frame(audio, arrives)


def reply_through_stall(tracker: PlaybackTracker, stall_from: int, stall_ms: int) -> int:
    """A 3 s reply (100 ms deltas at 4x real time, ticks every 20 ms); the ms the caller went dry."""
    twilio = StalledTwilio(stall_from, stall_ms)
    deltas = {25 * k: 5 for k in range(30)}
    for now in range(0, 4000, 5):
        if now in deltas:
            tracker.enqueue("item_A", frames(deltas[now]))
            send(tracker, twilio, now)
        if now % FRAME_MS == 0:
            send(tracker, twilio, now)
    return twilio.dry_ms


@pytest.mark.parametrize("stall_from", range(300, 2500, 130))
def test_the_serving_lead_rides_out_a_300_ms_stall_anywhere_in_a_reply(stall_from: int) -> None:
    assert reply_through_stall(serve_tracker(), stall_from, 300) == 0


def test_a_100_ms_lead_does_not() -> None:
    assert reply_through_stall(PlaybackTracker(100, 60), 1000, 300) > 0


def test_no_lead_rides_out_a_stall_in_the_first_moments_of_a_reply() -> None:
    """Only what has been generated can be queued: 10-70 ms in, less than 300 ms is at Twilio."""
    assert all(reply_through_stall(serve_tracker(), start, 300) > 0 for start in range(10, 80, 10))


@pytest.mark.parametrize("stall_from", range(0, 2500, 35))
def test_a_prebuffer_a_delta_over_a_stall_rides_it_out_from_the_first_frame_on(stall_from: int) -> None:
    """Twilio's buffer dips by up to a delta's spacing (25 ms) between deltas, so 340 ms covers 300."""
    assert reply_through_stall(serve_tracker(340), stall_from, 300) == 0


def test_a_prebuffer_just_the_stalls_length_can_fall_short_by_that_dip() -> None:
    assert 0 < reply_through_stall(serve_tracker(300), 65, 300) <= 25


def test_the_prebuffer_holds_a_start_until_that_much_is_queued() -> None:
    tracker = serve_tracker(300)
    tracker.enqueue("item_A", frames(5))  # 100 ms, generated at 4x real time
    assert tracker.take_messages(0) == []
    assert tracker.next_send_ms() == 300  # the longest it waits
    tracker.enqueue("item_A", frames(5))
    assert tracker.take_messages(25) == []
    tracker.enqueue("item_A", frames(5))  # 300 ms queued at 50 ms
    assert tracker.next_send_ms() is not None and tracker.next_send_ms() <= 50  # type: ignore[operator]
    sent = tracker.take_messages(50)
    assert [m.frames for m in sent] == [10, 5]  # all of it, in whole messages under the lead


def test_the_prebuffer_waits_no_longer_than_its_length() -> None:
    """Generation slower than real time: after 300 ms the start goes with what there is."""
    tracker = serve_tracker(300)
    tracker.enqueue("item_A", frames(3))
    assert tracker.take_messages(0) == [] and tracker.take_messages(299) == []
    assert [m.frames for m in tracker.take_messages(300)] == [3]


def test_the_end_of_an_items_audio_releases_a_held_start() -> None:
    tracker = serve_tracker(300)
    tracker.enqueue("item_A", frames(4))  # a short reply: 80 ms in all
    assert tracker.take_messages(0) == []
    tracker.end_item("item_A")
    assert tracker.next_send_ms() == 1 - LEAD + 3 * FRAME_MS  # due at once
    assert [m.frames for m in tracker.take_messages(10)] == [4]


def test_audio_that_joins_a_playing_buffer_is_not_held() -> None:
    tracker = serve_tracker(300)
    tracker.enqueue("item_A", frames(15))
    assert [m.frames for m in tracker.take_messages(0)] == [10, 5]  # 300 ms: plays until 300
    tracker.end_item("item_A")
    tracker.enqueue("item_B", frames(2))  # the next reply while Twilio still plays the last
    assert [m.frames for m in tracker.take_messages(100)] == [2]
    tracker.enqueue("item_C", frames(2))  # and one after Twilio ran dry: held again
    assert tracker.take_messages(400) == [] and tracker.next_send_ms() == 700


def test_a_barge_in_drops_a_held_start_and_the_next_reply_is_held_afresh() -> None:
    tracker = serve_tracker(300)
    tracker.enqueue("item_A", frames(5))
    assert tracker.take_messages(0) == []
    cut = tracker.interrupt(40)
    assert (cut.item_id, cut.heard_ms, cut.twilio_had_audio) == ("item_A", 0, False)
    assert tracker.next_send_ms() is None
    tracker.enqueue("item_B", frames(5))
    assert tracker.take_messages(60) == [] and tracker.next_send_ms() == 360


@settings(max_examples=60, deadline=None)
@given(
    prebuffer_ms=st.sampled_from([100, 300, 600]),
    bursts=st.lists(
        st.tuples(st.integers(0, 700), st.integers(1, 40), st.booleans(), st.booleans()),
        min_size=1,
        max_size=6,
    ),
)
def test_a_pacer_sleeping_until_next_send_ms_misses_nothing_with_a_prebuffer(
    prebuffer_ms: int, bursts: list[tuple[int, int, bool, bool]]
) -> None:
    """Nothing is ever sent before it is due, a held start costs at most one wake that sends
    nothing, and no start waits longer than the prebuffer: everything is sent in the end."""
    tracker = serve_tracker(prebuffer_ms)
    now, item, held_since = 0, 0, None
    for gap, n, new_item, ends in [*bursts, (100_000, 0, False, True)]:
        item += new_item
        tracker.enqueue(f"item_{item}", frames(n))
        if ends:
            tracker.end_item(f"item_{item}")
        for _ in range(gap):
            due = tracker.next_send_ms()
            if due is None:
                break
            sent = tracker.take_messages(now)
            if due > now:
                assert not sent, (now, due)
            elif not sent:  # a start held: it wakes again no later than the prebuffer allows
                assert held_since is None or now < held_since + prebuffer_ms
                held_since = now if held_since is None else held_since
                assert tracker.next_send_ms() is not None and tracker.next_send_ms() > now  # type: ignore[operator]
            else:
                held_since = None
            now += 1
    assert tracker.queued_frames == 0 and tracker.next_send_ms() is None


def test_a_prebuffer_longer_than_the_lead_is_refused() -> None:
    with pytest.raises(ValueError, match="PREBUFFER"):
        Settings(_env_file=None, playback_lead_ms=200, media_message_ms=200, playback_prebuffer_ms=300)  # type: ignore[call-arg]


# ----- the call: barge-in with larger messages ---------------------------------------------------


class ServeCall:
    """A CallSession in the serving shape, with a fake Twilio that plays and echoes marks."""

    def __init__(self, mode: str = "pcmu", **overrides: Any) -> None:
        base = call_config(SERVE)
        agent = AgentConfig(audio_mode=mode, instructions="Acme Dental.", greeting="")  # type: ignore[arg-type]
        fields = {f: getattr(base, f) for f in CallConfig.__dataclass_fields__} | {"agent": agent}
        self.session = CallSession(CallConfig(**(fields | overrides)))
        self.twilio = h.FakeTwilioPlayer()
        self.flushed: list[str] = []
        self.realtime: list[dict[str, Any]] = []
        self.twilio_msgs: list[dict[str, Any]] = []
        self.feed(self.session.receive_twilio(tw.parse(h.tw_start()), 0), 0)
        self.feed(self.session.realtime_connected(0), 0)
        fmt = h.PCMU if mode == "pcmu" else h.PCM24K
        self.feed(self.session.receive_realtime(rte.parse(h.session_updated(fmt)), 0), 0)
        assert self.session.phase == "active"
        self.realtime.clear()

    def feed(self, actions: list[Action], now: int) -> list[Action]:
        for action in actions:
            if isinstance(action, SendTwilio):
                self.twilio_msgs.append(json.loads(action.text))
                self.flushed += self.twilio.receive(action.text, now)
            elif isinstance(action, SendRealtime):
                h.assert_client_event(action.event)
                self.realtime.append(action.event)
        return actions

    def rt(self, event: dict[str, Any], now: int) -> list[Action]:
        return self.feed(self.session.receive_realtime(rte.parse(event), now), now)

    def tw(self, raw: str, now: int) -> list[Action]:
        return self.feed(self.session.receive_twilio(tw.parse(raw), now), now)

    def run(self, start: int, until: int) -> None:
        for now in range(start, until + 1, 20):
            self.feed(self.session.tick(now), now)
            for name in self.flushed + self.twilio.echoes_due(now):
                self.tw(h.tw_mark(name), now)
            self.flushed = []


def test_barge_in_mid_message_truncates_at_what_the_caller_heard_since_the_last_echo() -> None:
    """One mark per 200 ms message: the echoed position alone lags what was heard by up to a
    message, so the truncation adds the time since the latest echo (Twilio plays in real time),
    never past the end of the message in flight."""
    call = ServeCall("pcmu")
    call.rt(h.response_created("resp_1"), 0)
    call.rt(h.item_added(h.assistant_audio_item("item_a1")), 0)
    audio = bytes(((i * 37) % 200) + 20 for i in range(8 * 3000))  # 3 s
    for k in range(30):
        call.rt(h.audio_delta("resp_1", "item_a1", audio[800 * k : 800 * (k + 1)]), 0)
    call.run(20, 1100)
    # Media and marks alternate: one mark after each message, never a message without one.
    shape = "".join({"media": "M", "mark": "k"}[m["event"]] for m in call.twilio_msgs)
    assert shape == "Mk" * (len(shape) // 2)
    assert all(len(base64.b64decode(m["media"]["payload"])) % 160 == 0 for m in call.twilio_msgs[::2])
    heard = call.session.playback.heard_ms("item_a1")
    assert heard == call.twilio.heard_bytes // 8 == 1000  # the caller heard 1,100 ms; 5 messages confirmed
    assert call.session.playback.heard_bytes_at("item_a1", 1110) // 8 == 1110  # 110 ms into the sixth
    assert call.session.playback.heard_bytes_at("item_a1", 5000) // 8 == 1200  # never past that message
    call.rt(h.speech_started("item_u2"), 1110)
    assert call.twilio_msgs[-1] == {"event": "clear", "streamSid": h.STREAM_SID}
    truncate = [e for e in call.realtime if e["type"] == "conversation.item.truncate"]
    assert truncate == [
        {
            "type": "conversation.item.truncate",
            "event_id": "evt_truncate_item_a1",
            "item_id": "item_a1",
            "content_index": 0,
            "audio_end_ms": 1110,
        }
    ]
    # The marks Twilio flushes after the clear mean discarded, and nothing more is sent.
    sent_before = len(call.twilio_msgs)
    call.run(1120, 2000)
    assert call.session.playback.heard_ms("item_a1") == 1000  # what Twilio confirmed before the clear
    assert len(call.twilio_msgs) == sent_before
    entry = call.session.conversation.transcript()[0]
    assert entry.interrupted and entry.heard_ms == 1110


def test_the_heard_estimate_grows_from_the_latest_echo_and_stops_at_the_next_message() -> None:
    tracker = serve_tracker()
    tracker.enqueue("item_a", [b"\x55" * 160] * 50)  # 1 s: five 200 ms messages
    messages = tracker.take_messages(0)  # the first three fit under the 600 ms lead
    assert [m.frames for m in messages] == [10, 10, 10]
    first, second = messages[0].mark, messages[1].mark
    assert first is not None and second is not None
    assert tracker.heard_bytes_at("item_a", 150) == 0  # no echo yet: nothing counts as heard
    assert tracker.mark_echoed(first)  # no arrival time: only the echoed position counts
    assert tracker.heard_bytes_at("item_a", 300) == 8 * 200
    assert tracker.mark_echoed(second, at_ms=420)
    assert tracker.heard_bytes_at("item_a", 420) == 8 * 400
    assert tracker.heard_bytes_at("item_a", 470) == 8 * 450  # 50 ms into the third message
    assert tracker.heard_bytes_at("item_a", 900) == 8 * 600  # never past the third message's end
    assert tracker.heard_bytes_at("item_b", 900) == 0  # another item's echo says nothing of it


def test_barge_in_before_any_mark_came_back_truncates_at_zero() -> None:
    call = ServeCall("pcmu")
    call.rt(h.response_created("resp_1"), 0)
    call.rt(h.audio_delta("resp_1", "item_a1", b"\x55" * 1600), 0)
    call.rt(h.speech_started("item_u2"), 90)
    (truncate,) = [e for e in call.realtime if e["type"] == "conversation.item.truncate"]
    assert truncate["audio_end_ms"] == 0


def test_with_a_prebuffer_each_reply_starts_once_that_much_is_generated_or_its_audio_ends() -> None:
    call = ServeCall("pcmu", playback_prebuffer_ms=340)
    call.rt(h.response_created("resp_1"), 0)
    for k in range(3):  # 100 ms deltas at 4x real time: 300 ms by 50 ms
        call.rt(h.audio_delta("resp_1", "item_a1", b"\x55" * 800), 25 * k)
    assert call.twilio_msgs == []
    call.rt(h.audio_delta("resp_1", "item_a1", b"\x55" * 800), 75)
    assert call.twilio.received_bytes // 8 == 400  # 340 ms were there: all of it goes, under the 600 ms lead
    call.rt(h.audio_done("resp_1", "item_a1"), 80)
    call.run(100, 1000)  # played and echoed
    call.twilio_msgs.clear()
    played = call.twilio.received_bytes
    call.rt(h.response_created("resp_2"), 1000)
    call.rt(h.audio_delta("resp_2", "item_a2", b"\x55" * 800), 1000)  # a 100 ms reply
    assert call.twilio_msgs == []
    call.rt(h.audio_done("resp_2", "item_a2"), 1010)  # its audio ended: nothing more to wait for
    assert (call.twilio.received_bytes - played) // 8 == 100


def test_a_barge_in_during_a_held_start_truncates_at_zero_and_drops_the_held_audio() -> None:
    call = ServeCall("pcmu", playback_prebuffer_ms=340)
    call.rt(h.response_created("resp_1"), 0)
    call.rt(h.audio_delta("resp_1", "item_a1", b"\x55" * 800), 0)
    call.rt(h.speech_started("item_u2"), 20)
    (truncate,) = [e for e in call.realtime if e["type"] == "conversation.item.truncate"]
    assert truncate["audio_end_ms"] == 0
    assert [m["event"] for m in call.twilio_msgs if m["event"] == "media"] == []
    call.run(40, 1000)
    assert call.twilio.received_bytes == 0  # the held audio was dropped, never sent


# ----- inbound batches ---------------------------------------------------------------------------


def appended(call: ServeCall) -> list[bytes]:
    return [base64.b64decode(e["audio"]) for e in call.realtime if e["type"] == "input_audio_buffer.append"]


@pytest.mark.parametrize("mode", ["pcm24k", "pcmu"])
def test_serving_appends_carry_60_ms_and_the_rest_is_flushed_at_stop(mode: str) -> None:
    call = ServeCall(mode)
    caller = [bytes([(n * 11 + k) % 256 for k in range(160)]) for n in range(8)]
    for n, frame in enumerate(caller):
        call.tw(h.tw_media(frame, 20 * n), 20 * n)
    assert len(appended(call)) == 2  # 6 frames in two appends, 2 held
    actions = call.tw(h.tw_stop(), 170)
    assert isinstance(actions[-1], EndCall) and len(appended(call)) == 3
    reference = InboundConverter(mode)  # type: ignore[arg-type]
    assert b"".join(appended(call)) == reference.convert(b"".join(caller))
    per_append = 960 * 3 if mode == "pcm24k" else 160 * 3
    assert [len(a) for a in appended(call)[:2]] == [per_append] * 2


def test_held_frames_go_before_a_key_press() -> None:
    call = ServeCall("pcmu")
    call.tw(h.tw_media(b"\x11" * 160, 0), 0)
    call.tw(h.tw_dtmf("7"), 10)
    assert [e["type"] for e in call.realtime] == ["input_audio_buffer.append", "conversation.item.create"]


def test_held_frames_are_sent_by_the_tick_when_twilio_stops_mid_batch() -> None:
    call = ServeCall("pcmu")
    call.tw(h.tw_media(b"\x11" * 160, 0), 0)
    call.feed(call.session.tick(100), 100)
    assert appended(call) == []
    call.feed(call.session.tick(120), 120)  # held two batches' worth of time
    assert appended(call) == [b"\x11" * 160]


def test_held_frames_are_dropped_when_the_session_is_lost() -> None:
    call = ServeCall("pcmu")
    call.tw(h.tw_media(b"\x11" * 160, 0), 0)
    call.feed(call.session.realtime_closed("code 1006", 10), 10)
    call.feed(call.session.realtime_connected(300), 300)
    call.rt(h.session_updated(h.PCMU), 320)
    call.realtime.clear()
    for n in range(3):
        call.tw(h.tw_media(b"\x22" * 160, 340 + 20 * n), 340 + 20 * n)
    assert appended(call) == [b"\x22" * 480]  # stale caller audio is not replayed
