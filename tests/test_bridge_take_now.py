"""The bridge's synchronous path for Twilio frames (`CallBridge._take_now`), over in-memory links.

The Twilio socket offers each message to the bridge as it is read, while the pump waits; media
frames and mark echoes are handled there and then. These tests drive a real `CallBridge` and
`CallSession` (pcmu, three frames per append) through links that implement the ports, and check
what reaches each side: the same events in the same order whichever path a frame took, also when
a send has to wait, and a failure on the fast path ends the call as a failing pump does.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from callbot.bridge import CallBridge, Pacer
from callbot.core.call import CallConfig
from callbot.core.realtime import AgentConfig
from tests.core_helpers import session_updated, tw_connected, tw_mark, tw_media, tw_start, tw_stop

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
    """The `RealtimeLink` port in memory; `ready=False` makes every send wait for `gate`."""

    def __init__(self) -> None:
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.ready = True
        self.gate = asyncio.Event()

    async def send(self, event: dict[str, Any]) -> None:
        await self.gate.wait()
        self.sent.append(event)

    def send_now(self, event: dict[str, Any]) -> bool:
        if not self.ready:
            return False
        self.sent.append(event)
        return True

    async def recv(self) -> dict[str, Any]:
        return await self.events.get()

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


async def _active_call() -> tuple[CallBridge, Twilio, Realtime, asyncio.Task[None], Pacer]:
    twilio, realtime, pacer = Twilio(), Realtime(), Pacer()
    config = CallConfig(agent=AgentConfig(audio_mode="pcmu"), inbound_batch_frames=3)
    bridge = CallBridge(twilio, Connector(realtime), config, pacer)
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
