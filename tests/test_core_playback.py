"""callbot.core.playback: pacing, mark bookkeeping, heard ms and the barge-in cut point."""

from __future__ import annotations

from core_helpers import FakeTwilioPlayer
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from callbot.core.playback import FRAME_BYTES, FRAME_MS, Interruption, PlaybackTracker

Taken = list[tuple[str, bytes, str | None]]


def frames(n: int, fill: int = 0x55) -> list[bytes]:
    return [bytes([fill]) * FRAME_BYTES for _ in range(n)]


def marks_of(taken: Taken) -> list[str]:
    return [m for _, _, m in taken if m is not None]


def play(tracker: PlaybackTracker, twilio: FakeTwilioPlayer, now_ms: int) -> Taken:
    """Send what is due now to the fake Twilio."""
    taken = tracker.take_due(now_ms)
    for _, frame, mark in taken:
        twilio.frame(frame, now_ms)
        if mark is not None:
            twilio.mark(mark, now_ms)
    return taken


def echo(tracker: PlaybackTracker, twilio: FakeTwilioPlayer, now_ms: int) -> list[bool]:
    return [tracker.mark_echoed(name) for name in twilio.echoes_due(now_ms)]


# ----- pacing ------------------------------------------------------------------------------------


def test_first_take_sends_lead_worth_of_frames_then_one_per_tick() -> None:
    tracker = PlaybackTracker(lead_ms=100, mark_interval_ms=60)
    tracker.enqueue("item_A", frames(20))
    first = tracker.take_due(0)
    assert len(first) == 5  # 100 ms of lead = 5 frames of 20 ms
    assert tracker.take_due(0) == []  # nothing more until time passes
    for now in range(20, 20 * 16, 20):
        assert len(tracker.take_due(now)) == 1, now
    assert tracker.queued_frames == 0
    assert tracker.take_due(400) == []
    assert tracker.frames_sent == 20


def test_take_due_returns_the_frames_in_order_with_their_item() -> None:
    tracker = PlaybackTracker(lead_ms=100)
    audio = [bytes([i]) * FRAME_BYTES for i in range(4)]
    tracker.enqueue("item_A", audio[:2])
    tracker.enqueue("item_B", audio[2:])
    taken = tracker.take_due(0)
    assert [(item, frame) for item, frame, _ in taken] == [
        ("item_A", audio[0]),
        ("item_A", audio[1]),
        ("item_B", audio[2]),
        ("item_B", audio[3]),
    ]


def test_a_late_tick_never_bursts_more_than_the_lead() -> None:
    tracker = PlaybackTracker(lead_ms=100)
    tracker.enqueue("item_A", frames(50))
    assert len(tracker.take_due(0)) == 5
    # The pacer stalls for 500 ms: Twilio's buffer ran dry long ago, send only a lead again.
    assert len(tracker.take_due(500)) == 5
    assert len(tracker.take_due(520)) == 1


def test_lead_of_one_frame_sends_one_frame_per_tick() -> None:
    tracker = PlaybackTracker(lead_ms=FRAME_MS, mark_interval_ms=20)
    tracker.enqueue("item_A", frames(3))
    assert len(tracker.take_due(0)) == 1
    assert len(tracker.take_due(0)) == 0
    assert len(tracker.take_due(20)) == 1


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=70), st.integers(min_value=0, max_value=6)),
        min_size=1,
        max_size=40,
    ),
    st.sampled_from([40, 60, 100, 200]),
)
def test_buffer_ahead_is_bounded_by_the_lead(steps: list[tuple[int, int]], lead_ms: int) -> None:
    """Whatever the tick jitter and delta sizes, Twilio never holds more than lead + one frame."""
    tracker = PlaybackTracker(lead_ms=lead_ms)
    twilio = FakeTwilioPlayer()
    now = 0
    for advance, new_frames in steps:
        now += advance
        tracker.enqueue("item_A", frames(new_frames))
        play(tracker, twilio, now)
        assert twilio.play_end_ms - now < lead_ms + FRAME_MS
        assert tracker.heard_ms("item_A") <= tracker.sent_ms("item_A")
        echo(tracker, twilio, now)


# ----- marks -------------------------------------------------------------------------------------


def test_marks_every_interval_and_after_the_items_last_frame() -> None:
    tracker = PlaybackTracker(lead_ms=1000, mark_interval_ms=60)
    tracker.enqueue("item_A", frames(7))
    tracker.enqueue("item_B", frames(2))
    taken = tracker.take_due(0)
    positions = [i for i, (_, _, mark) in enumerate(taken) if mark is not None]
    # A: after 3 and 6 frames (60 ms each) and after its 7th (end of item); B: after its last.
    assert positions == [2, 5, 6, 8]
    assert [taken[i][0] for i in positions] == ["item_A", "item_A", "item_A", "item_B"]


def test_mark_names_are_unique_and_carry_the_generation() -> None:
    tracker = PlaybackTracker(lead_ms=1000, mark_interval_ms=20)
    tracker.enqueue("item_A", frames(4))
    names = marks_of(tracker.take_due(0))
    assert len(names) == 4 and len(set(names)) == 4
    assert all(name.startswith("g0.") for name in names)
    tracker.interrupt(100)
    tracker.enqueue("item_B", frames(2))
    later = marks_of(tracker.take_due(100))
    assert all(name.startswith("g1.") for name in later)
    assert not set(later) & set(names)


def test_mark_at_end_of_queue_while_an_item_is_still_streaming() -> None:
    # Deltas arrive in bursts: when the queue runs dry the last frame gets a mark, so the heard
    # position never lags by more than what is queued.
    tracker = PlaybackTracker(lead_ms=1000, mark_interval_ms=60)
    tracker.enqueue("item_A", frames(1))
    assert marks_of(tracker.take_due(0)) != []


# ----- heard ms from echoes ----------------------------------------------------------------------


def test_heard_ms_advances_with_echoes_of_the_current_generation() -> None:
    tracker = PlaybackTracker(lead_ms=1000, mark_interval_ms=60)
    tracker.enqueue("item_A", frames(7))
    names = marks_of(tracker.take_due(0))
    assert tracker.heard_ms("item_A") == 0
    assert tracker.sent_ms("item_A") == 140
    assert tracker.mark_echoed(names[0]) is True
    assert tracker.heard_ms("item_A") == 60
    assert tracker.mark_echoed(names[1]) is True
    assert tracker.heard_ms("item_A") == 120
    assert tracker.mark_echoed(names[2]) is True
    assert tracker.heard_ms("item_A") == 140


def test_out_of_order_or_repeated_echoes_never_move_heard_backwards() -> None:
    tracker = PlaybackTracker(lead_ms=1000, mark_interval_ms=60)
    tracker.enqueue("item_A", frames(6))
    first, second = marks_of(tracker.take_due(0))
    assert tracker.mark_echoed(second) is True
    assert tracker.mark_echoed(first) is True
    assert tracker.heard_ms("item_A") == 120
    assert tracker.mark_echoed(second) is False  # a repeated echo is not news
    assert tracker.heard_ms("item_A") == 120


def test_unknown_mark_names_do_not_count() -> None:
    tracker = PlaybackTracker(lead_ms=1000, mark_interval_ms=60)
    tracker.enqueue("item_A", frames(3))
    tracker.take_due(0)
    assert tracker.mark_echoed("g0.999") is False
    assert tracker.mark_echoed("someone-elses-mark") is False
    assert tracker.heard_ms("item_A") == 0


def test_heard_ms_is_per_item() -> None:
    tracker = PlaybackTracker(lead_ms=1000, mark_interval_ms=1000)
    tracker.enqueue("item_A", frames(2))
    tracker.enqueue("item_B", frames(5))
    a_end, b_end = marks_of(tracker.take_due(0))
    tracker.mark_echoed(a_end)
    tracker.mark_echoed(b_end)
    assert (tracker.heard_ms("item_A"), tracker.heard_ms("item_B")) == (40, 100)


def test_echoes_that_arrive_after_an_interrupt_do_not_count() -> None:
    # After `clear`, Twilio echoes every pending mark at once: that audio was discarded.
    tracker = PlaybackTracker(lead_ms=1000, mark_interval_ms=60)
    tracker.enqueue("item_A", frames(9))
    names = marks_of(tracker.take_due(0))
    assert tracker.mark_echoed(names[0]) is True
    cut = tracker.interrupt(70)
    assert cut == Interruption("item_A", 60, True)
    assert [tracker.mark_echoed(n) for n in names[1:]] == [False, False]
    assert tracker.heard_ms("item_A") == 60


def test_realistic_playback_heard_follows_the_clock() -> None:
    tracker = PlaybackTracker(lead_ms=100, mark_interval_ms=60)
    twilio = FakeTwilioPlayer()
    tracker.enqueue("item_A", frames(50))  # one second of audio
    heard = {}
    for now in range(0, 1200, 20):
        play(tracker, twilio, now)
        echo(tracker, twilio, now)
        heard[now] = tracker.heard_ms("item_A")
    assert heard[0] == 0
    assert heard[60] == 60
    assert 300 <= heard[360] <= 360  # within one mark interval of the playhead
    assert heard[1180] == 1000
    assert not tracker.is_playing(1180)


# ----- interrupt ---------------------------------------------------------------------------------


def test_interrupt_while_twilio_has_audio_reports_item_heard_and_drops_the_rest() -> None:
    tracker = PlaybackTracker(lead_ms=100, mark_interval_ms=60)
    twilio = FakeTwilioPlayer()
    tracker.enqueue("item_A", frames(50))
    for now in range(0, 200, 20):
        play(tracker, twilio, now)
        echo(tracker, twilio, now)
    sent_before = tracker.frames_sent
    cut = tracker.interrupt(190)
    assert cut.item_id == "item_A"
    assert cut.heard_ms == tracker.heard_ms("item_A") == 180
    assert cut.twilio_had_audio is True
    assert tracker.queued_frames == 0
    assert tracker.frames_dropped == 50 - sent_before
    assert not tracker.is_playing(190)
    assert tracker.take_due(200) == []
    assert tracker.playing_item() is None


def test_interrupt_with_nothing_playing() -> None:
    tracker = PlaybackTracker()
    assert tracker.interrupt(0) == Interruption(None, 0, False)
    assert not tracker.is_playing(0)


def test_interrupt_after_everything_was_heard_finds_nothing_playing() -> None:
    tracker = PlaybackTracker(lead_ms=100, mark_interval_ms=60)
    twilio = FakeTwilioPlayer()
    tracker.enqueue("item_A", frames(4))
    play(tracker, twilio, 0)
    echo(tracker, twilio, 100)
    assert not tracker.is_playing(100)
    assert tracker.interrupt(100) == Interruption(None, 0, False)
    assert tracker.heard_ms("item_A") == 80


def test_interrupt_with_audio_queued_but_nothing_sent_yet() -> None:
    tracker = PlaybackTracker()
    tracker.enqueue("item_A", frames(3))
    assert tracker.interrupt(0) == Interruption("item_A", 0, False)
    assert tracker.frames_dropped == 3


def test_interrupt_names_the_first_unconfirmed_item() -> None:
    tracker = PlaybackTracker(lead_ms=1000, mark_interval_ms=1000)
    tracker.enqueue("item_A", frames(2))
    tracker.enqueue("item_B", frames(2))
    a_end, _ = marks_of(tracker.take_due(0))
    tracker.mark_echoed(a_end)
    assert tracker.playing_item() == "item_B"
    cut = tracker.interrupt(50)
    assert cut == Interruption("item_B", 0, True)


def test_new_audio_after_an_interrupt_plays_normally() -> None:
    tracker = PlaybackTracker(lead_ms=100, mark_interval_ms=60)
    twilio = FakeTwilioPlayer()
    tracker.enqueue("item_A", frames(20))
    play(tracker, twilio, 0)
    tracker.interrupt(30)
    for name in twilio.clear(30):
        assert tracker.mark_echoed(name) is False
    tracker.enqueue("item_B", frames(10))
    taken = play(tracker, twilio, 40)
    assert len(taken) == 5 and {item for item, _, _ in taken} == {"item_B"}
    for now in range(60, 400, 20):
        play(tracker, twilio, now)
        assert all(echo(tracker, twilio, now))
    assert tracker.heard_ms("item_B") == 200
    assert tracker.heard_ms("item_A") == 0


# ----- is_playing / forget -----------------------------------------------------------------------


def test_is_playing_transitions() -> None:
    tracker = PlaybackTracker(lead_ms=100, mark_interval_ms=60)
    twilio = FakeTwilioPlayer()
    assert not tracker.is_playing(0)
    tracker.enqueue("item_A", frames(3))
    assert tracker.is_playing(0)  # queued
    play(tracker, twilio, 0)
    assert tracker.queued_frames == 0
    assert tracker.is_playing(30)  # sent, mark not echoed yet
    echo(tracker, twilio, 59)
    assert tracker.is_playing(59)
    echo(tracker, twilio, 60)
    assert not tracker.is_playing(60)


def test_is_playing_until_the_estimated_end_even_without_marks() -> None:
    tracker = PlaybackTracker(lead_ms=100, mark_interval_ms=60)
    tracker.enqueue("item_A", frames(3))
    for name in marks_of(tracker.take_due(0)):
        tracker.mark_echoed(name)
    assert tracker.is_playing(40)  # our estimate says Twilio still has 20 ms
    assert not tracker.is_playing(60)


def test_forget_drops_an_items_counters() -> None:
    tracker = PlaybackTracker(lead_ms=1000)
    tracker.enqueue("item_A", frames(3))
    for name in marks_of(tracker.take_due(0)):
        tracker.mark_echoed(name)
    assert tracker.heard_ms("item_A") == 60
    tracker.forget("item_A")
    assert (tracker.heard_ms("item_A"), tracker.sent_ms("item_A")) == (0, 0)


def test_the_outbound_queue_is_bounded_and_drops_the_oldest_frames() -> None:
    tracker = PlaybackTracker(lead_ms=100, mark_interval_ms=60, max_queued_ms=200)  # 10 frames
    tracker.enqueue("a", [bytes([n]) * 160 for n in range(25)])
    assert tracker.queued_frames == 10 and tracker.frames_overflowed == 15
    first = tracker.take_due(0)[0][1]
    assert first == bytes([15]) * 160  # the newest audio survives; the oldest went


# ----- when the next message is due -------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    lead_ms=st.sampled_from([100, 200, 600]),
    message_ms=st.sampled_from([20, 100, 200]),
    bursts=st.lists(
        st.tuples(st.integers(0, 400), st.integers(1, 40), st.booleans()), min_size=1, max_size=5
    ),
)
def test_next_send_ms_is_the_first_time_take_messages_sends(
    lead_ms: int, message_ms: int, bursts: list[tuple[int, int, bool]]
) -> None:
    """A caller that sleeps until next_send_ms misses nothing and wakes for nothing (a message fits
    under the lead, as the settings require)."""
    assume(message_ms <= lead_ms)
    tracker = PlaybackTracker(lead_ms, message_ms, message_ms=message_ms)
    now, item = 0, 0
    for gap, n, new_item in [*bursts, (100_000, 0, False)]:
        item += new_item
        tracker.enqueue(f"item_{item}", frames(n))
        for _ in range(gap):
            due = tracker.next_send_ms()
            assert bool(tracker.take_messages(now)) == (due is not None and due <= now), (now, due)
            if due is None:
                break
            now += 1
    assert tracker.queued_frames == 0 and tracker.next_send_ms() is None
