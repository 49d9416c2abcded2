"""The Twilio side of a call: the Media Streams websocket, as text frames in and out.

A thin wrapper over Starlette's WebSocket that turns a disconnect into `None`, enforces the
per-message size bound, and keeps sends in order even when the Realtime pump and the pacer
both send. Under `ChannelWebSocketProtocol` (how callbot serves) messages travel through the
server's direct text channel instead of ASGI messages (adapters/ws_channel.py); the behaviour
is the same either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from callbot.adapters.ws_channel import TextChannel, open_channel

log = logging.getLogger("callbot.twilio")


class TwilioSocket:
    def __init__(self, ws: WebSocket, max_message_bytes: int) -> None:
        self._ws = ws
        self._max = max_message_bytes
        self._lock = asyncio.Lock()
        self._channel: TextChannel | None = None
        self.closed = False
        """Nothing more can be sent: the peer left, a send failed, or we closed."""
        self._drained = False  # recv() has seen the end of the peer's messages, or we closed
        self.oversized = 0

    def accepted(self) -> None:
        """Call once the websocket is accepted: switches to the server's text channel if offered."""
        self._channel = open_channel(self._ws.scope)

    @property
    def direct(self) -> bool:
        """True when messages bypass ASGI (the server offered a text channel)."""
        return self._channel is not None

    async def recv(self) -> str | None:
        """The next text frame, or None once Twilio has gone; oversized frames are skipped.

        A failed send does not end receiving: what Twilio sent before it left (its `stop`,
        say) is still read, in order, before the None."""
        channel = self._channel
        while not self._drained:
            text = await (channel.receive() if channel is not None else self._asgi_next())
            if text is None:
                self._drained = self.closed = True
                return None
            if len(text) > self._max:
                self.oversized += 1
                log.warning("dropping an oversized Twilio message (%d bytes)", len(text))
                continue
            return text
        return None

    def offer_to(self, handler: Callable[[str], bool] | None) -> bool:
        """Offer each message to `handler` as it is read, while `recv` waits for one (so it comes
        after everything `recv` returned); True from it takes the message, which `recv` then skips.
        An oversized message is never offered: `recv` drops it as always. Returns False (and
        does nothing) without the server's text channel: then every message comes through `recv`."""
        channel = self._channel
        if channel is None:
            return False
        if handler is None:
            channel.offer = None
            return True
        limit = self._max
        if channel.max_bytes is not None and channel.max_bytes <= limit:
            channel.offer = handler  # the channel never delivers more bytes, so never more characters
            return True

        def offer(text: str) -> bool:
            return len(text) <= limit and handler(text)

        channel.offer = offer
        return True

    def send_now(self, texts: Sequence[str]) -> bool:
        """`send` without waiting: False when the messages have to go through `send` (no text
        channel, back-pressure, an earlier send still waiting), True when done with them."""
        if self.closed or not texts:
            return True
        channel = self._channel
        if channel is None:
            return False
        sent = channel.send_now(texts)
        if sent is None:
            return False
        if not sent:
            self.closed = True
        return True

    async def _asgi_next(self) -> str | None:
        try:
            message = await self._ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        if text is None:
            text = (message.get("bytes") or b"").decode("utf-8", "replace")
        return str(text)

    async def send(self, texts: Sequence[str]) -> None:
        """Send these messages in order (through the channel: in one write)."""
        if self.closed or not texts:
            return
        if self._channel is not None:
            if not await self._channel.send(texts):
                self.closed = True
            return
        async with self._lock:
            try:
                for text in texts:
                    await self._ws.send_text(text)
            except (WebSocketDisconnect, RuntimeError, OSError):
                self.closed = True

    async def close(self, code: int = 1000) -> None:
        if (
            self._ws.application_state == WebSocketState.CONNECTED
            and self._ws.client_state != WebSocketState.DISCONNECTED
        ):
            # Twilio closes right after `stop`; closing a closed socket is fine.
            with contextlib.suppress(WebSocketDisconnect, RuntimeError, OSError):
                await self._ws.close(code)
        self.closed = self._drained = True
