"""The direct text channel of ChannelWebSocketProtocol, through real uvicorn and a real websocket client."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode

from callbot.adapters.ws_channel import ChannelWebSocketProtocol, TextChannel, open_channel
from callbot.testing.serving import serve_app
from tests.channel_helpers import in_memory_websocket, masked_frame

Handler = Callable[[WebSocket, TextChannel | None], Awaitable[None]]


def _app(handler: Handler, opened: list[TextChannel | None]) -> Starlette:
    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        await asyncio.sleep(0.1)  # the client's first messages arrive before the channel opens
        channel = open_channel(ws.scope)
        opened.append(channel)
        await handler(ws, channel)

    return Starlette(routes=[WebSocketRoute("/ws", endpoint)])


def _url(base_url: str) -> str:
    return base_url.replace("http://", "ws://") + "/ws"


async def test_messages_keep_their_order_across_the_switch_and_replies_go_out_together() -> None:
    got: list[str | None] = []

    async def echo(ws: WebSocket, channel: TextChannel | None) -> None:
        assert channel is not None
        while (text := await channel.receive()) is not None:
            got.append(text)
            if text == "3":
                assert await channel.send(["a", "b", "c"])  # three frames, one write
        got.append(None)

    opened: list[TextChannel | None] = []
    async with serve_app(_app(echo, opened), ws=ChannelWebSocketProtocol) as base_url:
        async with connect(_url(base_url)) as client:
            for text in ("1", "2"):
                await client.send(text)  # before the server opened the channel
            await asyncio.sleep(0.2)
            await client.send(b"3")  # a binary frame arrives as text too
            replies = [await client.recv() for _ in range(3)]
        for _ in range(50):
            if got[-1:] == [None]:
                break
            await asyncio.sleep(0.02)
    assert replies == ["a", "b", "c"]
    assert got == ["1", "2", "3", None]  # and the client's close ends receive()
    assert opened[0] is not None and opened[0].closed


async def test_a_slow_reader_pauses_the_socket_and_loses_nothing() -> None:
    n = TextChannel.HIGH_WATER * 4
    got: list[str] = []
    paused: list[bool] = []

    async def slow(ws: WebSocket, channel: TextChannel | None) -> None:
        assert channel is not None
        await asyncio.sleep(0.3)  # the client has sent everything by now
        protocol = channel._protocol
        paused.append(protocol.read_paused)
        while len(got) < n:
            text = await channel.receive()
            assert text is not None
            got.append(text)
        paused.append(protocol.read_paused)
        await channel.send(["done"])

    opened: list[TextChannel | None] = []
    async with (
        serve_app(_app(slow, opened), ws=ChannelWebSocketProtocol) as base_url,
        connect(_url(base_url)) as client,
    ):
        for i in range(n):
            await client.send(str(i))
        assert await asyncio.wait_for(client.recv(), 5) == "done"
    assert got == [str(i) for i in range(n)]
    assert paused == [True, False]  # back-pressure while the app was busy, reading again after


async def test_invalid_utf8_closes_with_1007_and_ends_receive() -> None:
    got: list[str | None] = []

    async def reader(ws: WebSocket, channel: TextChannel | None) -> None:
        assert channel is not None
        got.append(await channel.receive())

    opened: list[TextChannel | None] = []
    async with (
        serve_app(_app(reader, opened), ws=ChannelWebSocketProtocol) as base_url,
        connect(_url(base_url)) as client,
    ):
        await asyncio.sleep(0.2)
        client.protocol.send_text(b"\xff\xfe not utf-8")  # websockets' own send refuses to
        client.send_data()
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(client.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
    assert got == [None]


async def test_sending_after_the_peer_left_reports_failure() -> None:
    results: list[bool] = []

    async def late_sender(ws: WebSocket, channel: TextChannel | None) -> None:
        assert channel is not None
        assert await channel.receive() is None  # the client is gone
        results.append(await channel.send(["too late"]))

    opened: list[TextChannel | None] = []
    async with serve_app(_app(late_sender, opened), ws=ChannelWebSocketProtocol) as base_url:
        async with connect(_url(base_url)):
            pass
        for _ in range(50):
            if results:
                break
            await asyncio.sleep(0.02)
    assert results == [False]


async def test_other_servers_offer_no_channel_and_asgi_works_as_before() -> None:
    got: list[str] = []

    async def plain(ws: WebSocket, channel: TextChannel | None) -> None:
        assert channel is None
        got.append(await ws.receive_text())
        await ws.send_text("ok")

    opened: list[TextChannel | None] = []
    async with (
        serve_app(_app(plain, opened), ws="websockets-sansio") as base_url,
        connect(_url(base_url)) as client,
    ):
        await client.send("hi")
        assert await client.recv() == "ok"
    assert opened == [None] and got == ["hi"]


async def test_frames_split_across_reads_or_sharing_one_arrive_whole_and_in_order() -> None:
    got: list[str] = []

    async def reader(ws: WebSocket, channel: TextChannel | None) -> None:
        assert channel is not None
        while (text := await channel.receive()) is not None:
            got.append(text)
            if len(got) == 6:
                await channel.send(["all here"])

    long = "x" * 300  # a 16-bit length field
    first, second = masked_frame("one"), masked_frame(long)
    fragments = masked_frame("fr", Opcode.TEXT, fin=False) + masked_frame("ag", Opcode.CONT)
    opened: list[TextChannel | None] = []
    async with (
        serve_app(_app(reader, opened), ws=ChannelWebSocketProtocol) as base_url,
        connect(_url(base_url)) as client,
    ):
        await asyncio.sleep(0.2)  # the channel is open
        pieces = [first[:1], first[1:], second[:3], second[3:100], second[100:]]
        pieces += [masked_frame("two") + masked_frame("three"), fragments[:5], fragments[5:]]
        for piece in pieces:
            client.transport.write(piece)
            await asyncio.sleep(0.02)  # separate reads on the server
        pong = await client.ping()  # a control frame between data frames is answered
        await asyncio.wait_for(pong, 5)
        client.transport.write(masked_frame("four"))
        assert await asyncio.wait_for(client.recv(), 5) == "all here"
    assert got == ["one", long, "two", "three", "frag", "four"]


async def test_a_frame_over_the_size_limit_fails_the_connection_with_1009() -> None:
    got: list[str | None] = []

    async def reader(ws: WebSocket, channel: TextChannel | None) -> None:
        assert channel is not None
        while (text := await channel.receive()) is not None:
            got.append(text)
        got.append(None)

    opened: list[TextChannel | None] = []
    async with (
        serve_app(_app(reader, opened), ws=ChannelWebSocketProtocol, ws_max_size=1000) as base_url,
        connect(_url(base_url)) as client,
    ):
        await asyncio.sleep(0.2)
        client.transport.write(masked_frame("fine") + masked_frame("y" * 2000))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(client.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert got == ["fine", None]


# ----- the synchronous fast path, in memory: a real ChannelWebSocketProtocol, as its probe runs it -----


def _channel(ws: WebSocket) -> TextChannel:
    channel = open_channel(ws.scope)
    assert channel is not None
    return channel


async def test_offer_sees_only_messages_read_while_receive_waits_and_order_holds() -> None:
    offered: list[str] = []

    def take(text: str) -> bool:
        offered.append(text)
        return text.startswith("take")

    async with in_memory_websocket() as (ws, protocol, _):
        channel = _channel(ws)
        channel.offer = take
        waiting = asyncio.create_task(channel.receive())
        await asyncio.sleep(0)  # receive() waits now
        protocol.data_received(masked_frame("take 1"))  # taken: receive() waits on
        protocol.data_received(masked_frame("keep 2"))  # refused: receive() returns it
        assert await asyncio.wait_for(waiting, 5) == "keep 2"
        protocol.data_received(
            masked_frame("take 3") + masked_frame("keep 4")
        )  # the app is busy: queued, not offered
        assert offered == ["take 1", "keep 2"]
        queued = [await channel.receive(), await channel.receive()]
        waiting = asyncio.create_task(channel.receive())  # a second wait (the loop is asked once)
        await asyncio.sleep(0)
        protocol.data_received(masked_frame("take 5") + masked_frame("keep 6"))
        assert await asyncio.wait_for(waiting, 5) == "keep 6"
    assert queued == ["take 3", "keep 4"]
    assert offered == ["take 1", "keep 2", "take 5", "keep 6"]
    assert channel._loop is asyncio.get_running_loop()


async def test_send_now_writes_all_texts_as_frames_in_one_write() -> None:
    async with in_memory_websocket() as (ws, _, transport):
        assert _channel(ws).send_now(["a", "bc"]) is True
    assert transport.writes == [b"\x81\x01a\x81\x02bc"]


async def test_send_now_sends_nothing_under_back_pressure() -> None:
    async with in_memory_websocket() as (ws, protocol, transport):
        channel = _channel(ws)
        protocol.writable.clear()  # what the transport's pause_writing does
        assert channel.send_now(["a"]) is None
        protocol.writable.set()
        assert channel.send_now(["b"]) is True
    assert transport.writes == [b"\x81\x01b"]


async def test_send_now_never_overtakes_a_send_that_is_still_waiting() -> None:
    async with in_memory_websocket() as (ws, protocol, transport):
        channel = _channel(ws)
        protocol.writable.clear()
        waiting = asyncio.create_task(channel.send(["first"]))
        await asyncio.sleep(0)  # it holds the send lock, waiting for the drain
        protocol.writable.set()  # drained, but that send has not run yet
        assert channel.send_now(["second"]) is None
        assert await asyncio.wait_for(waiting, 5) is True
    assert transport.writes == [b"\x81\x05first"]


async def test_a_send_queued_behind_another_is_not_overtaken_when_the_first_is_written() -> None:
    async with in_memory_websocket() as (ws, protocol, transport):
        channel = _channel(ws)
        protocol.writable.clear()

        async def first_then_more() -> bool | None:
            await channel.send(["A"])
            return channel.send_now(["C"])  # B is still queued on the lock: C must not go first

        first = asyncio.create_task(first_then_more())
        await asyncio.sleep(0)
        second = asyncio.create_task(channel.send(["B"]))
        await asyncio.sleep(0)
        protocol.writable.set()
        assert await asyncio.wait_for(first, 5) is None
        assert await asyncio.wait_for(second, 5) is True
    assert transport.writes == [b"\x81\x01A", b"\x81\x01B"]


async def test_send_now_reports_a_closed_socket() -> None:
    async with in_memory_websocket() as (ws, protocol, transport):
        channel = _channel(ws)
        protocol.connection_lost(None)
        assert channel.closed and channel.send_now(["too late"]) is False
    assert transport.writes == []
