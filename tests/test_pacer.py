"""The process-wide pacer: which calls it ticks, and that housekeeping is spread over the ticks."""

from __future__ import annotations

import time
from collections import Counter
from types import SimpleNamespace
from typing import Any, cast

from callbot.bridge import FRAMES_FLOW_S, HOUSEKEEPING_TICKS, CallBridge, Pacer


class _Call:
    def __init__(self, queued: int = 0) -> None:
        self.queued = queued
        self.ticked: list[int] = []
        self.tick = 0
        self.frame_at = 0.0  # no Twilio frame handled in the read callback yet

    def wake_due(self) -> bool:
        return self.queued > 0

    async def on_tick(self) -> None:
        self.ticked.append(self.tick)


async def test_playing_calls_tick_every_time_and_idle_calls_once_per_cycle_on_spread_slots() -> None:
    pacer = Pacer()
    idle = [_Call() for _ in range(100)]
    playing = _Call(queued=5)
    calls = [*idle, playing]
    for call in calls:
        pacer._calls[cast(CallBridge, call)] = len(pacer._calls) % HOUSEKEEPING_TICKS
    ticks = range(1, 2 * HOUSEKEEPING_TICKS + 1)
    for tick in ticks:
        for call in calls:
            call.tick = tick
        await pacer.sweep(tick)
    assert playing.ticked == list(ticks)
    assert all(len(call.ticked) == 2 for call in idle)  # deadlines checked twice in two cycles
    per_tick = Counter(tick for call in idle for tick in call.ticked)
    assert max(per_tick.values()) == 100 // HOUSEKEEPING_TICKS  # 4 per tick, never 100 at once


async def test_a_call_whose_frames_keep_coming_is_checked_only_on_its_slot() -> None:
    """Its frames pace it (the core sends due audio on each); once they stop, the pacer does."""
    pacer = Pacer()
    flowing = _Call(queued=5)
    pacer._calls[cast(CallBridge, flowing)] = 3
    for tick in range(1, HOUSEKEEPING_TICKS + 1):
        flowing.tick, flowing.frame_at = tick, time.monotonic()  # a frame just arrived
        await pacer.sweep(tick)
    assert flowing.ticked == [3]
    flowing.frame_at = time.monotonic() - FRAMES_FLOW_S - 0.001  # the frames stopped
    flowing.tick = 100
    await pacer.sweep(100)
    assert flowing.ticked == [3, 100]


async def test_added_calls_get_consecutive_slots_and_leave_cleanly() -> None:
    pacer = Pacer()
    bridges: list[Any] = [_Call() for _ in range(HOUSEKEEPING_TICKS + 1)]
    pacer._task = cast(Any, SimpleNamespace(done=lambda: False))  # no real ticking in this test
    for bridge in bridges:
        assert pacer.add(bridge)
    assert not pacer.add(bridges[0])
    assert len(pacer) == HOUSEKEEPING_TICKS + 1  # a call added twice is paced once
    assert sorted(pacer._calls.values()) == sorted([*range(HOUSEKEEPING_TICKS), 0])
    pacer.discard(bridges[0])
    pacer.discard(bridges[0])  # twice is fine
    assert bridges[0] not in pacer._calls and len(pacer) == HOUSEKEEPING_TICKS
