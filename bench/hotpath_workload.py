"""A fixed, deterministic per-frame workload of one call's core, for instruction counts.

    python bench/hotpath_workload.py --seconds 20
    PYTHONPATH=/path/to/other/checkout python bench/hotpath_workload.py   # another commit's core
    valgrind --tool=callgrind --callgrind-out-file=cg.out python bench/hotpath_workload.py

The load benchmark's CPU figures move by 10-20 % on a shared machine; an instruction count of
the same scripted call does not. This drives one `CallSession` (no sockets, no event loop) the
way the bridge does for the load bench's script: a Twilio media frame every 20 ms (the JSON text
Twilio sends, through `twilio.parse`), the pacer's check of the call every 20 ms and a tick when
it is due (and every 500 ms), replies of 2.5 s as 100 ms PCM16 24 kHz deltas at 4x real time
(the JSON text the Realtime server sends, decoded with orjson and parsed as the bridge does),
each mark echoed once the audio before it has played, and a pause between turns. It works on
the core of the commits before the typed Realtime events (`receive_realtime(dict)`) and after
(`receive_realtime(realtime_events.parse(dict))`), so two checkouts run the same call.

It prints the actions produced and the wall time; under callgrind compare the `Collected`
instruction counts (`callgrind_annotate` lists the functions).
"""

from __future__ import annotations

import argparse
import base64
import math
import sys
import time
from collections import deque
from typing import Any

import orjson

import callbot
from callbot.core import twilio as tw
from callbot.core.call import CallConfig, CallSession

try:
    from callbot.core import realtime_events as rte
except ImportError:  # a core from before the typed Realtime events
    rte = None  # type: ignore[assignment]

try:
    from callbot.core.actions import SendRealtime, SendTwilio
except ImportError:  # a core from before core/actions.py
    from callbot.core.call import SendRealtime, SendTwilio  # type: ignore[attr-defined,no-redef]

STREAM = "MZ" + "0" * 32
CALL = "CA" + "0" * 32
TICK_MS = 20
HOUSEKEEPING_MS = 500
DELTA_MS = 100
REALTIME_FACTOR = 4
REPLY_MS = 2500
TURN_MS = 1500


def _tone_pcm24k(ms: int) -> bytes:
    import array

    n = 24 * ms
    samples = array.array("h", (int(8000 * math.sin(2 * math.pi * 440 * i / 24000)) for i in range(n)))
    return samples.tobytes()


def _media_text(seq: int, ts_ms: int, payload: str) -> str:
    return orjson.dumps(
        {
            "event": "media",
            "sequenceNumber": str(seq),
            "media": {"track": "inbound", "chunk": str(seq), "timestamp": str(ts_ms), "payload": payload},
            "streamSid": STREAM,
        }
    ).decode()


class Driver:
    def __init__(self, config: CallConfig) -> None:
        self.session = CallSession(config)
        self.typed = rte is not None and hasattr(self.session, "next_wake_ms")
        self.actions = 0
        self.twilio_out = 0
        self.realtime_out = 0
        self.pending_marks: deque[tuple[int, str]] = deque()  # (echo at ms, name)
        self.played_until_ms = 0

    def realtime(self, raw: bytes, now_ms: int) -> None:
        event: Any = orjson.loads(raw)
        if self.typed:
            event = rte.parse(event)
        self.perform(self.session.receive_realtime(event, now_ms), now_ms)

    def twilio(self, text: str, now_ms: int) -> None:
        self.perform(self.session.receive_twilio(tw.parse(text), now_ms), now_ms)

    def due(self, now_ms: int) -> bool:
        if self.typed:
            wake = self.session.next_wake_ms()
            return wake is not None and wake <= now_ms + 1
        return bool(self.session.playback.queued_frames)

    def perform(self, actions: list[Any], now_ms: int) -> None:
        for action in actions:
            self.actions += 1
            if isinstance(action, SendTwilio):
                self.twilio_out += 1
                msg = orjson.loads(action.text)
                if msg["event"] == "media":
                    ms = len(base64.b64decode(msg["media"]["payload"])) // 8
                    self.played_until_ms = max(self.played_until_ms, now_ms) + ms
                elif msg["event"] == "mark":
                    self.pending_marks.append((self.played_until_ms, msg["mark"]["name"]))
                elif msg["event"] == "clear":
                    self.played_until_ms = now_ms
                    while self.pending_marks:
                        _, name = self.pending_marks.popleft()
                        self.twilio(
                            orjson.dumps(
                                {"event": "mark", "streamSid": STREAM, "mark": {"name": name}}
                            ).decode(),
                            now_ms,
                        )
            elif isinstance(action, SendRealtime):
                self.realtime_out += 1


def run(seconds: float) -> Driver:
    config = CallConfig(
        playback_lead_ms=600, mark_interval_ms=200, media_message_ms=200, inbound_batch_frames=3
    )
    d = Driver(config)
    start = {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": STREAM,
        "start": {
            "streamSid": STREAM,
            "accountSid": "AC" + "0" * 32,
            "callSid": CALL,
            "tracks": ["inbound"],
            "customParameters": {"from": "+15550001111", "to": "+15550002222"},
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    }
    d.twilio(orjson.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}).decode(), 0)
    d.twilio(orjson.dumps(start).decode(), 0)
    d.perform(d.session.realtime_connected(5), 5)
    fmt = {"type": "audio/pcm", "rate": 24000}
    updated = {
        "type": "session.updated",
        "event_id": "ev_1",
        "session": {"type": "realtime", "audio": {"input": {"format": fmt}, "output": {"format": fmt}}},
    }
    d.realtime(orjson.dumps(updated), 10)
    payload = base64.b64encode(bytes([0xFF]) * 160).decode()
    delta_b64 = base64.b64encode(_tone_pcm24k(DELTA_MS)).decode()
    end_ms = int(seconds * 1000)
    cycle = TURN_MS + REPLY_MS + 1000
    seq = 1
    deltas_per_reply = REPLY_MS // DELTA_MS
    delta_every = DELTA_MS // REALTIME_FACTOR
    turn = 0
    for now in range(20, end_ms, 5):
        t = now % cycle
        if now % TICK_MS == 0:
            seq += 1
            d.twilio(_media_text(seq, now, payload), now)
            while d.pending_marks and d.pending_marks[0][0] <= now:
                _, name = d.pending_marks.popleft()
                d.twilio(
                    orjson.dumps({"event": "mark", "streamSid": STREAM, "mark": {"name": name}}).decode(), now
                )
            if now % HOUSEKEEPING_MS == 0 or d.due(now):
                d.perform(d.session.tick(now), now)
        if t == TURN_MS:
            turn += 1
            for raw in _reply_start(turn):
                d.realtime(raw, now)
        k, rem = divmod(t - TURN_MS, delta_every)
        if rem == 0 and 0 <= k < deltas_per_reply:
            delta = {
                "type": "response.output_audio.delta",
                "event_id": f"ev_d{turn}_{k}",
                "response_id": f"resp_{turn}",
                "item_id": f"item_a{turn}",
                "output_index": 0,
                "content_index": 0,
                "delta": delta_b64,
            }
            d.realtime(orjson.dumps(delta), now)
        elif rem == 0 and k == deltas_per_reply:
            for raw in _reply_end(turn):
                d.realtime(raw, now)
    return d


def _reply_start(turn: int) -> list[bytes]:
    item = {
        "id": f"item_a{turn}",
        "type": "message",
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    }
    return [
        orjson.dumps(
            {
                "type": "response.created",
                "event_id": f"ev_c{turn}",
                "response": {
                    "id": f"resp_{turn}",
                    "object": "realtime.response",
                    "status": "in_progress",
                    "output": [],
                },
            }
        ),
        orjson.dumps(
            {
                "type": "conversation.item.added",
                "event_id": f"ev_a{turn}",
                "previous_item_id": None,
                "item": item,
            }
        ),
    ]


def _reply_end(turn: int) -> list[bytes]:
    item_id = f"item_a{turn}"
    return [
        orjson.dumps(
            {
                "type": "response.output_audio.done",
                "event_id": f"ev_e{turn}",
                "response_id": f"resp_{turn}",
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
            }
        ),
        orjson.dumps(
            {
                "type": "response.done",
                "event_id": f"ev_f{turn}",
                "response": {
                    "id": f"resp_{turn}",
                    "object": "realtime.response",
                    "status": "completed",
                    "output": [],
                },
            }
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="call time to simulate")
    args = parser.parse_args(argv)
    t0 = time.process_time()
    d = run(args.seconds)
    cpu_ms = (time.process_time() - t0) * 1000
    print(
        f"callbot {callbot.__file__}: {args.seconds:g} s of call, {d.actions} actions "
        f"({d.twilio_out} to Twilio, {d.realtime_out} to Realtime), {cpu_ms:.1f} ms CPU",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
