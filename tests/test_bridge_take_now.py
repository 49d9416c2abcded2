"""The bridge's synchronous paths for Twilio frames (`CallBridge._take_now`) and Realtime events
(`CallBridge._take_realtime`), over in-memory links.

The Twilio socket offers each message to the bridge as it is read, while the pump waits; media
frames and mark echoes are handled there and then. The Realtime link does the same with events.
These tests drive a real `CallBridge` and `CallSession` (pcmu, three frames per append) through
links that implement the ports, and check
what reaches each side: the same events in the same order whichever path a frame took, also when
a send has to wait, and a failure on the fast path ends the call as a failing pump does.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from callbot.bridge import CallBridge, Pacer
from callbot.core.call import CallConfig
from callbot.core.realtime import AgentConfig
from callbot.metrics import Metrics
from tests.core_helpers import (
    assistant_audio_item,
    audio_delta,
    item_added,
    response_created,
    session_updated,
    speech_started,
    tw_connected,
    tw_mark,
    tw_media,
    tw_start,
    tw_stop,
)

PCMU = {"type": "audio/pcmu"}


class Twilio:
    """The `TwilioLink` port in memory: `deliver` plays the text channel's part."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[str | None] = asyncio.Queue()
        self.handler: Callable[[str], bool] | None = None
        self.sent: list[str] = []
        self.offered = 0

    def deliver(self, text: str) -> None:
        """As `TextChannel.deliver`: offered while the pump waits in `recv`, else queued for it."""
        if self.handler is not None and self.inbox.empty():
            self.offered += 1
            if self.handler(text):
                return
        self.inbox.put_nowait(text)

    async def recv(self) -> str | None:
        return await self.inbox.get()

    async def send(self, texts: Sequence[str]) -> None:
        self.sent.extend(texts)

    def send_now(self, texts: Sequence[str]) -> bool:
        self.sent.extend(texts)
        return True

    def offer_to(self, handler: Callable[[str], bool] | None) -> bool:
        self.handler = handler
        return True

    async def close(self) -> None:
        pass


class Realtime:
    """The `RealtimeLink` port in memory; `ready=False` makes every send wait for `gate`.
    `deliver` plays the frame tap's part: offered while the pump waits in `recv`, else queued."""

    def __init__(self, offers: bool = False) -> None:
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.ready = True
        self.gate = asyncio.Event()
        self.offers = offers
        self.handler: Callable[[dict[str, Any]], bool] | None = None
        self.waiting = False
        self.offered = 0

    def deliver(self, event: dict[str, Any]) -> None:
        if self.handler is not None and self.waiting and self.events.empty():
            self.offered += 1
            if self.handler(event):
                return
        self.events.put_nowait(event)

    async def send(self, event: dict[str, Any]) -> None:
        await self.gate.wait()
        self.sent.append(event)

    def send_now(self, event: dict[str, Any]) -> bool:
        if not self.ready:
            return False
        self.sent.append(event)
        return True

    async def recv(self) -> dict[str, Any]:
        self.waiting = True
        try:
            return await self.events.get()
        finally:
            self.waiting = False

    def offer_to(self, handler: Callable[[dict[str, Any]], bool] | None) -> bool:
        if not self.offers:
            return False  # every event through `recv`
        self.handler = handler
        return True

    async def close(self) -> None:
        pass


class Connector:
    def __init__(self, link: Realtime) -> None:
        self.link = link

    async def connect(self) -> Realtime:
        return self.link


async def _until(condition: Callable[[], bool]) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition not reached")


async def _active_call(
    offers: bool = False, metrics: Metrics | None = None
) -> tuple[CallBridge, Twilio, Realtime, asyncio.Task[None], Pacer]:
    twilio, realtime, pacer = Twilio(), Realtime(offers), Pacer()
    config = CallConfig(agent=AgentConfig(audio_mode="pcmu"), inbound_batch_frames=3)
    bridge = CallBridge(twilio, Connector(realtime), config, pacer, metrics=metrics)
    task = asyncio.create_task(bridge.run())
    await _until(lambda: twilio.handler is not None)
    twilio.deliver(tw_connected())
    twilio.deliver(tw_start())
    await _until(lambda: any(e["type"] == "session.update" for e in realtime.sent))
    realtime.events.put_nowait(session_updated(PCMU, PCMU))
    await _until(lambda: bridge.session.phase == "active")
    realtime.sent.clear()
    return bridge, twilio, realtime, task, pacer


def _appended(realtime: Realtime) -> list[bytes]:
    return [base64.b64decode(e["audio"]) for e in realtime.sent if e["type"] == "input_audio_buffer.append"]


async def _hang_up(bridge: CallBridge, twilio: Twilio, task: asyncio.Task[None], pacer: Pacer) -> None:
    twilio.inbox.put_nowait(None)
    await asyncio.wait_for(task, 5)
    await pacer.stop()


async def test_media_frames_are_handled_as_offered_and_append_in_order() -> None:
    bridge, twilio, realtime, task, pacer = await _active_call()
    frames = [bytes([i]) * 160 for i in range(6)]
    for i, frame in enumerate(frames):
        twilio.deliver(tw_media(frame, timestamp_ms=20 * i, chunk=i + 1))
    assert twilio.inbox.empty()  # every frame was taken on the spot, none woke the pump
    assert _appended(realtime) == [b"".join(frames[:3]), b"".join(frames[3:])]
    twilio.deliver(tw_mark("unknown-mark"))  # mark echoes are taken too
    assert twilio.inbox.empty()
    await _hang_up(bridge, twilio, task, pacer)
    assert bridge.session.stats.inbound_frames == 6


async def test_a_send_that_must_wait_keeps_later_frames_behind_it() -> None:
    bridge, twilio, realtime, task, pacer = await _active_call()
    realtime.ready = False  # back-pressure: the first append has to wait for the socket
    frames = [bytes([0x10 + i]) * 160 for i in range(6)]
    for i, frame in enumerate(frames[:3]):
        twilio.deliver(tw_media(frame, timestamp_ms=20 * i, chunk=i + 1))
    assert realtime.sent == [] and bridge._later is not None
    for i, frame in enumerate(frames[3:], start=3):
        twilio.deliver(tw_media(frame, timestamp_ms=20 * i, chunk=i + 1))
    # refused while the first send waits: the pump takes them, and waits for it in turn
    await _until(lambda: twilio.inbox.empty())
    await asyncio.sleep(0.02)
    assert realtime.sent == []
    realtime.ready = True
    realtime.gate.set()
    await _until(lambda: len(_appended(realtime)) == 2)
    assert _appended(realtime) == [b"".join(frames[:3]), b"".join(frames[3:])]
    await _hang_up(bridge, twilio, task, pacer)


async def test_a_failure_on_the_fast_path_ends_the_call_with_its_traceback(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge, twilio, _realtime, task, pacer = await _active_call()

    def broken(event: Any, now_ms: int) -> list[Any]:
        raise RuntimeError("core bug")

    monkeypatch.setattr(bridge.session, "receive_twilio", broken)
    offered = twilio.offered
    with caplog.at_level(logging.ERROR, logger="callbot.bridge"):
        twilio.deliver(tw_media(b"\xff" * 160))
        await asyncio.wait_for(task, 5)
    await pacer.stop()
    failed = [r for r in caplog.records if "twilio-in failed" in r.getMessage()]
    assert failed and failed[0].exc_info is not None
    assert "core bug" in str(failed[0].exc_info[1])
    assert bridge.session.end_reason == "internal error in twilio-in"
    assert twilio.offered == offered + 1  # the pump raised, nothing was offered again


async def test_start_and_stop_still_go_through_the_pump() -> None:
    bridge, twilio, _realtime, task, pacer = await _active_call()
    offered = twilio.offered
    twilio.deliver(tw_stop())
    assert twilio.offered == offered + 1 and twilio.inbox.qsize() == 1  # refused: queued for the pump
    await asyncio.wait_for(task, 5)
    await pacer.stop()
    assert bridge.session.phase == "ended"


def _reply(audio: bytes) -> list[dict[str, Any]]:
    """A response of two pcmu deltas, as the Realtime server sends it."""
    item = assistant_audio_item("item_a1")
    half = len(audio) // 2
    return [
        response_created("resp_1"),
        item_added(item),
        audio_delta("resp_1", "item_a1", audio[:half]),
        audio_delta("resp_1", "item_a1", audio[half:]),
    ]


def _media_out(twilio: Twilio) -> bytes:
    sent = [json.loads(text) for text in twilio.sent]
    return b"".join(base64.b64decode(m["media"]["payload"]) for m in sent if m["event"] == "media")


async def test_realtime_events_are_handled_as_offered_and_reach_twilio_in_order() -> None:
    bridge, twilio, realtime, task, pacer = await _active_call(offers=True)
    await _until(lambda: realtime.waiting)
    audio = bytes(range(256)) * 2  # 25.6 frames: under the lead, so all of it goes at once
    for event in _reply(audio):
        realtime.deliver(event)
    assert realtime.events.empty() and realtime.offered == 4  # none woke the pump
    assert _media_out(twilio) == audio[: len(audio) // 160 * 160]
    await _hang_up(bridge, twilio, task, pacer)


async def test_a_realtime_event_whose_send_must_wait_keeps_later_events_behind_it() -> None:
    bridge, twilio, realtime, task, pacer = await _active_call(offers=True)
    await _until(lambda: realtime.waiting)
    for event in _reply(bytes(range(256)) * 2):
        realtime.deliver(event)
    twilio.sent.clear()
    realtime.ready = False  # back-pressure: the cancel and truncate of a barge-in have to wait
    realtime.deliver(speech_started("item_u2", audio_start_ms=0))
    assert bridge._later is not None and not bridge._later.done()
    realtime.deliver(audio_delta("resp_2", "item_a2", b"\x11" * 320))  # refused: queued for the pump
    assert realtime.events.qsize() == 1
    await asyncio.sleep(0.02)
    assert [e["type"] for e in realtime.sent] == []
    assert _media_out(twilio) == b""  # the pump took the delta and waits for the cancel first
    realtime.ready = True
    realtime.gate.set()
    await _until(lambda: _media_out(twilio) == b"\x11" * 320)
    assert realtime.sent[0]["type"] == "response.cancel"
    await _hang_up(bridge, twilio, task, pacer)


async def test_a_failure_on_the_realtime_fast_path_ends_the_call_with_its_traceback(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    bridge, _twilio, realtime, task, pacer = await _active_call(offers=True)
    await _until(lambda: realtime.waiting)

    def broken(event: Any, now_ms: int) -> list[Any]:
        raise RuntimeError("core bug")

    monkeypatch.setattr(bridge.session, "receive_realtime", broken)
    with caplog.at_level(logging.ERROR, logger="callbot.bridge"):
        realtime.deliver(response_created("resp_1"))
        await asyncio.wait_for(task, 5)
    await pacer.stop()
    failed = [r for r in caplog.records if "realtime-in failed" in r.getMessage()]
    assert failed and failed[0].exc_info is not None and "core bug" in str(failed[0].exc_info[1])
    assert bridge.session.end_reason == "internal error in realtime-in"
    assert realtime.offered == 1  # the pump raised on it, nothing was offered again


async def test_while_a_pump_waits_for_a_pending_send_neither_read_callback_takes_a_message() -> None:
    """The Realtime pump has an agent delta to send to Twilio, but first waits for the append
    `_take_now` left (back-pressure); a Twilio frame that arrives meanwhile goes to its pump too,
    instead of being handled ahead of that send."""
    bridge, twilio, realtime, task, pacer = await _active_call()
    realtime.ready = False
    for i in range(3):  # a whole batch: its append has to wait
        twilio.deliver(tw_media(bytes([0x20 + i]) * 160, timestamp_ms=20 * i, chunk=i + 1))
    pending = bridge._later
    assert pending is not None and not pending.done()
    for event in _reply(bytes(range(256)) * 2)[:3]:  # through the pump, which waits for `pending`
        realtime.events.put_nowait(event)  # at the delta
    await _until(lambda: realtime.events.empty())
    await asyncio.sleep(0.02)
    assert bridge._later is pending and _media_out(twilio) == b""  # waited for, left in place
    offered = twilio.offered
    twilio.deliver(tw_media(b"\x30" * 160, timestamp_ms=60, chunk=4))
    assert twilio.offered == offered + 1 and twilio.inbox.qsize() == 1  # declined: queued for the pump
    realtime.ready = True
    realtime.gate.set()
    await _until(lambda: twilio.inbox.empty() and len(_media_out(twilio)) > 0)
    assert _appended(realtime)[0] == bytes([0x20]) * 160 + bytes([0x21]) * 160 + bytes([0x22]) * 160
    await _hang_up(bridge, twilio, task, pacer)


@pytest.mark.parametrize("offers", [True, False], ids=["read-callback", "pump"])
async def test_one_audio_delta_in_five_is_timed_on_either_path(offers: bool) -> None:
    metrics = Metrics()
    bridge, twilio, realtime, task, pacer = await _active_call(offers=offers, metrics=metrics)
    await _until(lambda: realtime.waiting)
    for event in _reply(bytes(range(256)) * 2)[:2]:
        realtime.deliver(event)
    for i in range(10):  # ten deltas, a response's other events untimed
        realtime.deliver(audio_delta("resp_1", "item_a1", bytes([i]) * 160))
        await _until(lambda: realtime.events.empty())
    await _until(lambda: len(_media_out(twilio)) == 1600)
    count = metrics.registry.get_sample_value("callbot_bridge_outbound_latency_seconds_count")
    assert count == 2
    assert (realtime.offered == 12) == offers
    await _hang_up(bridge, twilio, task, pacer)
