"""The Realtime adapter's fast send path puts exactly the same frames on the wire as the SDK's send_raw."""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

import orjson
import pytest
import uvloop
from openai import AsyncOpenAI
from openai.resources.realtime.realtime import AsyncRealtimeConnection
from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Frame, Opcode, apply_mask
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.streams import StreamReader
from websockets.uri import parse_uri

from callbot.adapters.realtime_openai import (
    OpenAIRealtimeConnector,
    OpenAIRealtimeLink,
    _direct_send,
    _FrameTap,
    _FrameWriter,
    _MaskKeys,
    _sdk_send,
    client_text_frame,
)
from callbot.core import realtime as rt
from callbot.errors import UpstreamError
from callbot.testing.fake_realtime import FakeRealtimeServer


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
        assert isinstance(link._send, _FrameWriter) == direct  # the path under test is really taken
        for event in events:
            await link.send(event)
        seen: list[str] = []
        while "response.done" not in seen:
            seen.append((await link.recv())["type"])
        await link.close()
        received = fake.sessions[0].received
        assert fake.violations == []
    assert received == events


class NewSdkConnection:
    """An SDK release that keeps its websocket elsewhere (or is not on websockets at all)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_raw(self, data: str) -> None:
        self.sent.append(data)


async def test_the_fast_path_falls_back_to_send_raw_when_the_sdk_changes() -> None:
    conn = NewSdkConnection()
    assert _direct_send(conn) is None
    connector = OpenAIRealtimeConnector(AsyncOpenAI(api_key="k"), "gpt-realtime-1.5")
    send = connector._sender(conn)
    await send(b'{"type":"response.cancel"}')
    assert conn.sent == ['{"type":"response.cancel"}']


class _MemoryTransport(asyncio.WriteTransport):
    """A transport that keeps what is written and reports whatever buffer the test sets."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.buffered = 0
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written.append(bytes(data))

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (16384, 65536)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def abort(self) -> None:  # as a real transport does, soon after
        if self.protocol is not None:
            asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _open_websocket(compress: bool = False) -> tuple[ClientConnection, _MemoryTransport, ServerProtocol]:
    """A real websockets client connection, opened by a real handshake over a memory transport."""
    deflate = [ClientPerMessageDeflateFactory()] if compress else None
    client = ClientProtocol(parse_uri("ws://127.0.0.1/v1/realtime"), extensions=deflate)
    ws = ClientConnection(client, close_timeout=0.05)
    transport = _MemoryTransport()
    transport.protocol = ws
    ws.connection_made(transport)
    server = ServerProtocol(extensions=[ServerPerMessageDeflateFactory()] if compress else None)
    client.send_request(client.connect())
    server.receive_data(b"".join(client.data_to_send()))
    [request] = server.events_received()
    server.send_response(server.accept(request))
    ws.data_received(b"".join(server.data_to_send()))
    assert ws.state is State.OPEN and ws.response is not None
    return ws, transport, server


def _parse_client_frames(raw: bytes, extensions: list[Any] | None = None) -> list[Frame]:
    """Frames as a websockets server reads them (it insists on masking from a client)."""
    reader = StreamReader()
    reader.feed_data(raw)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=True, max_size=None, extensions=extensions or [])
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


async def test_the_frame_writer_frames_itself_with_a_fresh_key_per_frame() -> None:
    ws, transport, _ = _open_websocket()
    writer = _FrameWriter(ws)
    await writer(b'{"type":"input_audio_buffer.append","audio":"AAAA"}')
    await writer(b"second")
    frames = _parse_client_frames(b"".join(transport.written))
    assert [f.data for f in frames] == [b'{"type":"input_audio_buffer.append","audio":"AAAA"}', b"second"]
    assert transport.written[0][2:6] != transport.written[1][2:6]  # a fresh key per frame


async def test_with_a_negotiated_extension_websockets_frames_every_message() -> None:
    ws, transport, server = _open_websocket(compress=True)
    writer = _FrameWriter(ws)
    await writer(b"third")
    raw = b"".join(transport.written)
    assert raw[0] & 0x40  # RSV1: compressed by websockets, which the fast path never does
    server.receive_data(raw)
    [frame] = server.events_received()
    assert (frame.opcode, frame.data) == (Opcode.TEXT, b"third")


@pytest.mark.parametrize("blocker", ["back-pressure", "closing"])
async def test_the_frame_writer_takes_websockets_send_when_the_socket_is_not_plainly_writable(
    blocker: str,
) -> None:
    ws, transport, server = _open_websocket()
    writer = _FrameWriter(ws)
    await writer(b"one")
    assert len(transport.written) == 1
    if blocker == "back-pressure":
        transport.buffered = 65536  # at the high-water mark: websockets' send waits for the drain
        await writer(b"two")
        frames = _parse_client_frames(b"".join(transport.written))
        assert [f.data for f in frames] == [b"one", b"two"]  # in order, framed by websockets
    else:
        server.send_close(1001)  # the server goes away: the client answers, then the socket closes
        ws.data_received(b"".join(server.data_to_send()))
        transport.written.clear()
        with pytest.raises(ConnectionClosed):  # websockets' send refuses, as it should
            await writer(b"two")
        assert transport.written == []


async def test_send_now_writes_the_event_as_one_masked_text_frame() -> None:
    ws, transport, _ = _open_websocket()
    writer = _FrameWriter(ws)
    assert writer.ready()
    event = rt.append("////")
    assert OpenAIRealtimeLink(None, None, writer).send_now(event) is True
    [written] = transport.written
    [frame] = _parse_client_frames(written)  # the parser insists on a mask
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, orjson.dumps(event))


@pytest.mark.parametrize("blocker", ["back-pressure", "closing"])
async def test_send_now_sends_nothing_when_the_socket_is_not_plainly_writable(blocker: str) -> None:
    ws, transport, server = _open_websocket()
    link = OpenAIRealtimeLink(None, None, _FrameWriter(ws))
    if blocker == "back-pressure":
        transport.buffered = 65535  # just below the high-water mark: still the fast path
        assert link.send_now(rt.append("////")) is True
        transport.buffered = 65536
    else:
        server.send_close(1001)
        ws.data_received(b"".join(server.data_to_send()))
        assert ws.state is not State.OPEN
    transport.written.clear()
    assert link.send_now(rt.append("AAAA")) is False
    assert transport.written == []


async def test_send_now_is_never_taken_through_the_sdks_send_raw() -> None:
    conn = NewSdkConnection()
    link = OpenAIRealtimeLink(None, conn, _sdk_send(conn))
    assert link.send_now(rt.append("////")) is False
    assert conn.sent == []


async def test_a_transport_write_failing_in_send_now_is_an_upstream_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ws, transport, _ = _open_websocket()

    def broken(data: bytes) -> None:
        raise OSError("broken pipe")

    monkeypatch.setattr(transport, "write", broken)
    link = OpenAIRealtimeLink(None, None, _FrameWriter(ws))
    with pytest.raises(UpstreamError, match="send failed: OSError") as raised:
        link.send_now(rt.append("////"))
    assert isinstance(raised.value.__cause__, OSError)


async def test_a_refused_connection_is_an_upstream_error() -> None:
    async with FakeRealtimeServer() as fake:
        fake.refuse_connections = True
        connector = OpenAIRealtimeConnector(
            AsyncOpenAI(api_key="k", base_url=fake.base_url), "gpt-realtime-1.5"
        )
        with pytest.raises(UpstreamError, match="could not open the Realtime session"):
            await connector.connect()


# ----- reading: the frame tap -----


def _tapped() -> tuple[OpenAIRealtimeLink, _FrameTap, _MemoryTransport, ServerProtocol]:
    """A link over a real websockets client connection with the frame tap in front of it."""
    ws, transport, server = _open_websocket()
    tap = _FrameTap(ws, 2**20)  # websockets' own max_size here (its default)
    transport.set_protocol(tap)
    return (
        OpenAIRealtimeLink(None, AsyncRealtimeConnection(ws), _FrameWriter(ws), tap),
        tap,
        transport,
        server,
    )


def _frames(server: ServerProtocol) -> bytes:
    return b"".join(server.data_to_send())


async def test_the_tap_offers_events_only_while_recv_waits_and_keeps_their_order() -> None:
    """Every third event is declined (it goes to websockets and comes out of recv); the reads are
    cut at random places, frames split across reads and several in one; the bridge's view
    (offered and received, as they happen) stays in the order the server sent."""
    link, tap, _transport, server = _tapped()
    seen: list[int] = []
    taken: list[int] = []

    def take(event: dict[str, Any]) -> bool:
        if event["n"] % 3 == 0:
            return False
        seen.append(event["n"])
        taken.append(event["n"])
        return True

    assert link.offer_to(take)

    async def consume() -> None:
        while len(seen) < 40:
            seen.append((await link.recv())["n"])

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0)
    for n in range(40):  # some long enough for a 16-bit length, as audio deltas are
        server.send_text(orjson.dumps({"type": "x", "n": n, "pad": "a" * (n * 97 % 700)}))
    data, rng, at = _frames(server), random.Random(3), 0
    while at < len(data):
        step = rng.randint(1, 400)
        tap.data_received(data[at : at + step])
        at += step
        if rng.random() < 0.3:
            await asyncio.sleep(0)  # let the consumer run between some reads
    await asyncio.wait_for(consumer, 2)
    assert seen == list(range(40))
    assert taken and len(taken) < 40 - 40 // 3  # some taken on the spot, some after a declined one


async def test_pings_and_fragments_go_to_websockets_which_answers_and_assembles() -> None:
    link, tap, transport, server = _tapped()
    taken: list[dict[str, Any]] = []
    link.offer_to(lambda event: taken.append(event) is None)
    first = asyncio.create_task(link.recv())
    await asyncio.sleep(0)
    server.send_ping(b"hi")
    server.send_text(b'{"n": ', fin=False)
    server.send_continuation(b"1}", fin=True)
    server.send_text(orjson.dumps({"n": 2}))
    tap.data_received(_frames(server))
    assert (await first)["n"] == 1
    assert taken == []  # n=2 came after a message websockets held for recv: not offered
    assert (await link.recv())["n"] == 2
    server.receive_data(b"".join(transport.written))
    assert [(f.opcode, f.data) for f in server.events_received()] == [(Opcode.PONG, b"hi")]
    server.send_text(orjson.dumps({"n": 3}))
    waiting = asyncio.create_task(link.recv())
    await asyncio.sleep(0)
    tap.data_received(_frames(server))
    assert [e["n"] for e in taken] == [3]  # recv waits again with nothing held: offered
    waiting.cancel()


async def test_a_frame_that_is_not_a_json_object_is_not_offered_and_recv_raises() -> None:
    link, tap, _transport, server = _tapped()
    link.offer_to(lambda event: True)
    pending = asyncio.create_task(link.recv())
    await asyncio.sleep(0)
    server.send_text(b"[1, 2]")
    tap.data_received(_frames(server))
    with pytest.raises(UpstreamError, match="not an object"):
        await pending


@pytest.mark.parametrize("bad", ["oversized", "masked"])
async def test_a_frame_websockets_must_refuse_switches_the_tap_off(bad: str) -> None:
    """An oversized frame (1009) or a masked one from the server (1002) goes to websockets with
    everything after it, which closes the connection with that code as it always did, and recv
    raises once the socket is gone."""
    link, tap, transport, server = _tapped()
    link.offer_to(lambda event: True)
    pending = asyncio.create_task(link.recv())
    await asyncio.sleep(0)
    if bad == "oversized":
        server.send_text(b'"' + b"x" * (1 << 20) + b'"')
        data = _frames(server)
    else:
        key = os.urandom(4)
        data = b"\x81\x82" + key + apply_mask(b"{}", key)
    tap.data_received(data)
    assert not tap._on
    server.receive_data(b"".join(transport.written))
    close = [f for f in server.events_received() if f.opcode is Opcode.CLOSE]
    assert close and int.from_bytes(close[0].data[:2], "big") == (1009 if bad == "oversized" else 1002)
    tap.connection_lost(None)  # the socket closes: the tap passes it on to websockets
    with pytest.raises(UpstreamError):
        await asyncio.wait_for(pending, 2)


def test_on_uvloop_the_tap_reads_a_real_session() -> None:
    """uvloop caches a protocol's callbacks when the connection opens: `set_protocol` must move
    them to the tap, over a real socket, or nothing would be offered."""

    async def session() -> tuple[list[str], list[str]]:
        async with FakeRealtimeServer() as fake:
            connector = OpenAIRealtimeConnector(
                AsyncOpenAI(api_key="k", base_url=fake.base_url), "gpt-realtime-1.5"
            )
            link = await connector.connect()
            taken: list[str] = []
            received: list[str] = []
            link.offer_to(lambda event: taken.append(event["type"]) is None)

            async def consume() -> None:
                while True:
                    received.append((await link.recv())["type"])

            consumer = asyncio.create_task(consume())
            await asyncio.sleep(0.05)
            await link.send(rt.session_update(rt.AgentConfig(audio_mode="pcmu")))
            for _ in range(200):
                if "session.updated" in taken + received:
                    break
                await asyncio.sleep(0.005)
            consumer.cancel()
            await link.close()
            assert fake.violations == []
        return taken, received

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        taken, received = runner.run(session())
    assert "session.updated" in taken  # it came while recv waited: offered, and taken
    assert "session.updated" not in received
