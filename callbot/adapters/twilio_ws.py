"""The Twilio side of a call: the Media Streams websocket, as text frames in and out.

A thin wrapper over Starlette's WebSocket that turns a disconnect into `None`, enforces the
per-message size bound, and serialises sends so media frames and marks keep their order even
when the Realtime pump and the pacer both send.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

log = logging.getLogger("callbot.twilio")


class TwilioSocket:
    def __init__(self, ws: WebSocket, max_message_bytes: int) -> None:
        self._ws = ws
        self._max = max_message_bytes
        self._lock = asyncio.Lock()
        self.closed = False
        self.oversized = 0

    async def recv(self) -> str | None:
        """The next text frame, or None once Twilio has gone; oversized frames are skipped."""
        while not self.closed:
            try:
                message = await self._ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                self.closed = True
                return None
            if message["type"] == "websocket.disconnect":
                self.closed = True
                return None
            text = message.get("text")
            if text is None:
                raw = message.get("bytes") or b""
                text = raw.decode("utf-8", "replace")
            if len(text) > self._max:
                self.oversized += 1
                log.warning("dropping an oversized Twilio message (%d bytes)", len(text))
                continue
            return text
        return None

    async def send(self, text: str) -> None:
        if self.closed:
            return
        async with self._lock:
            try:
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
        self.closed = True
