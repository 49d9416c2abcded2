"""The Realtime adapter's fast send path puts exactly the same frames on the wire as the SDK's send_raw."""

from __future__ import annotations

import pytest
from openai import AsyncOpenAI
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.streams import StreamReader

from callbot.adapters.realtime_openai import (
    OpenAIRealtimeConnector,
    UpstreamError,
    _direct_send,
    _FrameWriter,
    _MaskKeys,
    client_text_frame,
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
        self.extensions: list[object] = []
        self.framed: list[bytes] = []

    def send_text(self, data: bytes) -> None:
        self.framed.append(data)


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class _Websocket:
    """Just the websockets.asyncio connection surface `_FrameWriter` touches."""

    def __init__(self, state: State = State.OPEN) -> None:
        self.protocol = _Protocol(state)
        self.transport = _Transport()
        self.fragmented_send_waiter: object | None = None
        self.paused = False
        self.flushed = 0
        self.slow: list[bytes] = []

    def send_data(self) -> None:
        self.flushed += 1

    async def send(self, data: bytes, text: bool | None = None) -> None:
        assert text is True
        self.slow.append(data)


def _parse_client_frames(raw: bytes) -> list[Frame]:
    """Frames as a websockets server reads them (it insists on masking from a client)."""
    reader = StreamReader()
    reader.feed_data(raw)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=True, max_size=None, extensions=[])
        try:
            next(parser)
        except StopIteration as done:
            frames.append(done.value)
    return frames


@pytest.mark.parametrize("size", [0, 1, 125, 126, 1280, 65535, 65536])
def test_client_text_frames_parse_as_websockets_reads_them(size: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    [frame] = _parse_client_frames(client_text_frame(data, b"\x01\x02\x03\x04"))
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, data)
    assert not (frame.rsv1 or frame.rsv2 or frame.rsv3)


def test_mask_keys_come_in_fours_from_refilled_random_blocks() -> None:
    keys = _MaskKeys()
    drawn = [keys.next() for _ in range(3 * _MaskKeys.BLOCK // 4 + 1)]  # three refills and a bit
    assert all(len(key) == 4 for key in drawn)
    assert len(set(drawn)) > len(drawn) * 0.99  # 32 random bits: repeats are rare, not systematic


async def test_the_frame_writer_frames_itself_and_lets_websockets_frame_with_extensions() -> None:
    ws = _Websocket()
    writer = _FrameWriter(ws)
    await writer(b'{"type":"input_audio_buffer.append","audio":"AAAA"}')
    await writer(b"second")
    frames = _parse_client_frames(b"".join(ws.transport.written))
    assert [f.data for f in frames] == [b'{"type":"input_audio_buffer.append","audio":"AAAA"}', b"second"]
    assert ws.transport.written[0][2:6] != ws.transport.written[1][2:6]  # a fresh key per frame
    ws.protocol.extensions = [object()]  # e.g. permessage-deflate: websockets must encode
    await writer(b"third")
    assert (ws.protocol.framed, ws.flushed, len(ws.transport.written)) == ([b"third"], 1, 2)


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
    assert (len(ws.transport.written), ws.slow) == (1, [])
    if blocker == "paused":
        ws.paused = True  # transport back-pressure: websockets' send waits for the drain
    elif blocker == "fragmented":
        ws.fragmented_send_waiter = object()
    else:
        ws.protocol.state = State.CLOSING  # websockets' send raises ConnectionClosed
    await writer(b"two")
    assert (len(ws.transport.written), ws.slow) == (1, [b"two"])


async def test_a_refused_connection_is_an_upstream_error() -> None:
    async with FakeRealtimeServer() as fake:
        fake.refuse_connections = True
        connector = OpenAIRealtimeConnector(
            AsyncOpenAI(api_key="k", base_url=fake.base_url), "gpt-realtime-1.5"
        )
        with pytest.raises(UpstreamError, match="could not open the Realtime session"):
            await connector.connect()
