"""TwilioSocket over real uvicorn: what Twilio sent before leaving is read even after a send failed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import connect

from callbot.adapters.twilio_ws import TwilioSocket
from callbot.adapters.ws_channel import ChannelWebSocketProtocol
from callbot.testing.serving import serve_app
from tests.channel_helpers import in_memory_websocket, masked_frame


@pytest.mark.parametrize("ws_impl", [ChannelWebSocketProtocol, "websockets-sansio"], ids=["channel", "asgi"])
async def test_messages_sent_before_the_peer_left_survive_a_failed_send(ws_impl: Any) -> None:
    """At saturation the pacer can send to a caller who has already sent `stop` and closed:
    that send fails, and the `stop` waiting in the inbox must still reach the bridge (the call
    ends as "caller hung up", not "Twilio websocket closed")."""
    left = asyncio.Event()
    seen: dict[str, Any] = {}

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        twilio = TwilioSocket(ws, max_message_bytes=10_000)
        twilio.accepted()
        seen["direct"] = twilio.direct
        await left.wait()
        for _ in range(250):  # sends succeed until the server has seen the close (timing varies)
            await twilio.send(["a media frame for a caller who is gone"])
            if twilio.closed:
                break
            await asyncio.sleep(0.02)
        seen["closed_after_send"] = twilio.closed
        seen["received"] = [await twilio.recv() for _ in range(3)]
        seen["after_end"] = await twilio.recv()

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    async with serve_app(app, ws=ws_impl) as base_url:
        async with connect(base_url.replace("http://", "ws://") + "/ws") as client:
            await client.send('{"event":"media"}')
            await client.send('{"event":"stop"}')
        left.set()
        for _ in range(400):
            if "after_end" in seen:
                break
            await asyncio.sleep(0.02)
    assert seen["direct"] is (ws_impl is ChannelWebSocketProtocol)
    assert seen["closed_after_send"] is True
    assert seen["received"] == ['{"event":"media"}', '{"event":"stop"}', None]
    assert seen["after_end"] is None


async def test_without_the_text_channel_nothing_is_offered_or_sent_at_once() -> None:
    seen: dict[str, Any] = {}

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        twilio = TwilioSocket(ws, max_message_bytes=10_000)
        twilio.accepted()
        seen["offer_to"] = twilio.offer_to(lambda text: True)
        seen["send_now"] = twilio.send_now(["at once"])
        seen["recv"] = await twilio.recv()  # every message comes through recv
        await twilio.send(["through send"])

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    async with (
        serve_app(app, ws="websockets-sansio") as base_url,
        connect(base_url.replace("http://", "ws://") + "/ws") as client,
    ):
        await client.send("hello")
        assert await asyncio.wait_for(client.recv(), 5) == "through send"  # nothing went out before it
    assert seen == {"offer_to": False, "send_now": False, "recv": "hello"}


async def test_offered_messages_skip_recv_and_oversized_ones_are_never_offered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    offered: list[str] = []

    def take(text: str) -> bool:
        offered.append(text)
        return text.startswith("take")

    async with in_memory_websocket() as (ws, protocol, _):
        twilio = TwilioSocket(ws, max_message_bytes=20)
        twilio.accepted()
        assert twilio.offer_to(take) is True
        waiting = asyncio.create_task(twilio.recv())
        await asyncio.sleep(0)  # recv waits now
        protocol.data_received(masked_frame("take 1"))
        protocol.data_received(masked_frame("take " + "x" * 20))  # oversized: to recv, which drops it
        await asyncio.sleep(0)  # recv waits again
        protocol.data_received(masked_frame("take 2") + masked_frame("keep 3"))
        assert await asyncio.wait_for(waiting, 5) == "keep 3"
    assert offered == ["take 1", "take 2", "keep 3"]
    assert twilio.oversized == 1 and "dropping an oversized Twilio message (25 bytes)" in caplog.messages


async def test_the_handler_is_offered_unwrapped_when_the_channel_bounds_messages_as_tightly() -> None:
    """uvicorn's ws_max_size already bounds every message the channel delivers (a longer frame goes
    to the websockets parser, which fails it with 1009), so no length check wraps the handler."""
    offered: list[str] = []

    def take(text: str) -> bool:
        offered.append(text)
        return text.startswith("take")

    async with in_memory_websocket() as (ws, protocol, _):
        twilio = TwilioSocket(ws, max_message_bytes=protocol.config.ws_max_size)
        twilio.accepted()
        assert twilio.offer_to(take) is True
        assert protocol.channel is not None and protocol.channel.offer is take
        waiting = asyncio.create_task(twilio.recv())
        await asyncio.sleep(0)
        protocol.data_received(masked_frame("take 1") + masked_frame("keep 2"))
        assert await asyncio.wait_for(waiting, 5) == "keep 2"
    assert offered == ["take 1", "keep 2"]


async def test_offer_to_none_sends_every_message_through_recv_again() -> None:
    offered: list[str] = []

    def take(text: str) -> bool:
        offered.append(text)
        return True

    async with in_memory_websocket() as (ws, protocol, _):
        twilio = TwilioSocket(ws, max_message_bytes=100)
        twilio.accepted()
        twilio.offer_to(take)
        assert twilio.offer_to(None) is True
        waiting = asyncio.create_task(twilio.recv())
        await asyncio.sleep(0)
        protocol.data_received(masked_frame("take 1"))
        assert await asyncio.wait_for(waiting, 5) == "take 1"
    assert offered == []


async def test_send_now_writes_at_once_or_leaves_the_messages_to_send() -> None:
    async with in_memory_websocket() as (ws, protocol, transport):
        twilio = TwilioSocket(ws, max_message_bytes=100)
        twilio.accepted()
        assert twilio.send_now(["a", "b"]) is True
        assert transport.writes == [b"\x81\x01a\x81\x01b"]
        protocol.writable.clear()  # back-pressure
        assert twilio.send_now(["c"]) is False
        assert transport.writes == [b"\x81\x01a\x81\x01b"] and not twilio.closed


async def test_send_now_to_a_socket_gone_marks_it_closed() -> None:
    async with in_memory_websocket() as (ws, protocol, transport):
        twilio = TwilioSocket(ws, max_message_bytes=100)
        twilio.accepted()
        protocol.connection_lost(None)
        assert twilio.send_now(["too late"]) is True  # done with them: the peer has gone
        assert twilio.closed
    assert transport.writes == []
