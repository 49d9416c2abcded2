"""The Realtime adapter's fast send path puts exactly the same frames on the wire as the SDK's send_raw."""

from __future__ import annotations

import pytest
from openai import AsyncOpenAI
from websockets.protocol import State

from callbot.adapters.realtime_openai import (
    OpenAIRealtimeConnector,
    UpstreamError,
    _direct_send,
    _FrameWriter,
)
from callbot.core import realtime as rt
from callbot.sim.fake_realtime import FakeRealtimeServer


@pytest.mark.parametrize("direct", [True, False])
async def test_direct_and_sdk_send_paths_deliver_the_same_events(direct: bool) -> None:
    events = [
        rt.session_update(rt.AgentConfig(audio_mode="pcmu")),
        rt.append("////"),
        rt.system_message("summary_0001", "Summary: caller Ana, order 88314."),
        rt.response_create("Say hello."),
    ]
    async with FakeRealtimeServer() as fake:
        connector = OpenAIRealtimeConnector(
            AsyncOpenAI(api_key="k", base_url=fake.base_url), "gpt-realtime-1.5"
        )
        connector._direct_send = direct
        link = await connector.connect()
        assert isinstance(link._send, _FrameWriter) == direct  # the fast path is really taken
        for event in events:
            await link.send(event)
        seen: list[str] = []
        while "response.done" not in seen:
            seen.append((await link.recv())["type"])
        await link.close()
        received = fake.sessions[0].received
        assert fake.violations == []
    assert received == events


async def test_the_fast_path_falls_back_to_send_raw_when_the_sdk_changes() -> None:
    class NewSdkConnection:
        def __init__(self) -> None:
            self.sent: list[str] = []

        async def send_raw(self, data: str) -> None:
            self.sent.append(data)

    conn = NewSdkConnection()
    send = _direct_send(conn)
    assert not isinstance(send, _FrameWriter)
    await send(b'{"type":"response.cancel"}')
    assert conn.sent == ['{"type":"response.cancel"}']


class _Protocol:
    def __init__(self, state: State) -> None:
        self.state = state
        self.framed: list[bytes] = []

    def send_text(self, data: bytes) -> None:
        self.framed.append(data)


class _Websocket:
    """Just the websockets.asyncio connection surface `_FrameWriter` touches."""

    def __init__(self, state: State = State.OPEN) -> None:
        self.protocol = _Protocol(state)
        self.fragmented_send_waiter: object | None = None
        self.paused = False
        self.flushed = 0
        self.slow: list[bytes] = []

    def send_data(self) -> None:
        self.flushed += 1

    async def send(self, data: bytes, text: bool | None = None) -> None:
        assert text is True
        self.slow.append(data)


@pytest.mark.parametrize(
    "blocker",
    ["paused", "fragmented", "closing"],
)
async def test_the_frame_writer_takes_the_full_send_when_the_socket_is_not_plainly_writable(
    blocker: str,
) -> None:
    ws = _Websocket()
    writer = _FrameWriter(ws)
    await writer(b"one")
    assert (ws.protocol.framed, ws.flushed, ws.slow) == ([b"one"], 1, [])
    if blocker == "paused":
        ws.paused = True  # transport back-pressure: websockets' send waits for the drain
    elif blocker == "fragmented":
        ws.fragmented_send_waiter = object()
    else:
        ws.protocol.state = State.CLOSING  # websockets' send raises ConnectionClosed
    await writer(b"two")
    assert (ws.protocol.framed, ws.flushed, ws.slow) == ([b"one"], 1, [b"two"])


async def test_a_refused_connection_is_an_upstream_error() -> None:
    async with FakeRealtimeServer() as fake:
        fake.refuse_connections = True
        connector = OpenAIRealtimeConnector(
            AsyncOpenAI(api_key="k", base_url=fake.base_url), "gpt-realtime-1.5"
        )
        with pytest.raises(UpstreamError, match="could not open the Realtime session"):
            await connector.connect()
