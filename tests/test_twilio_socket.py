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
