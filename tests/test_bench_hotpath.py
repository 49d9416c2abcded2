"""bench/hotpath_workload.py: the scripted call it counts instructions of is a real call of the core."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import hotpath_workload


def test_the_workload_streams_both_ways_and_plays_every_reply() -> None:
    d = hotpath_workload.run(10.0)
    # one session.update, then one append per three caller frames (499 frames after the start)
    assert d.realtime_out == 1 + 499 // 3
    # two replies of 2.5 s: 100 ms messages while the 600 ms lead fills, then 200 ms ones, one mark each
    assert d.twilio_out == 2 * 2 * (6 + 10 + 1)
    assert not d.pending_marks or d.pending_marks[0][0] > 9_000  # every mark but the last echoed
    assert d.typed  # this checkout parses Realtime events into the typed events first


def test_the_channel_workload_carries_every_frame_through_the_direct_channel() -> None:
    import channel_workload

    frames = channel_workload._media_frames(40)
    # every frame fed arrives at the pump's loop as Twilio media; it exits if the channel is off
    assert channel_workload._serve(frames) == 40


def test_the_read_floor_server_reads_every_call_s_frames_and_measures_its_own_cpu() -> None:
    """bench/read_floor.py: 4 calls for 0.5 s read about 4 x 50 frames a second (one per read on a
    quiet loopback, a few merged when the server is slow), and its CPU is its own, not zero."""
    import argparse

    import read_floor

    args = argparse.Namespace(
        seconds=0.5, loop="asyncio", write_every=2, server_cpu=0, load_cpu=0, calls_now=4
    )
    row = read_floor.measure(args)
    assert row["calls"] == 4 and row["loop"] == "asyncio" and row["write_every"] == 2
    assert 100 <= row["reads_per_s"] <= 220  # 200 frames a second sent; TCP may merge a few
    assert row["cpu_ms_per_s"] > 0 and row["us_per_read"] > 0
