"""The OpenAI Realtime adapter: one GA websocket session per call through the official SDK.

Events travel as plain dicts. Incoming frames are read raw (`recv_bytes`) and parsed with
orjson instead of the SDK's pydantic union: the audio deltas are most of the traffic and the
typed parse costs more than the rest of the bridge (audio.md section 5). Outgoing events are
framed straight onto the websocket when it can take them (`_FrameWriter`); their shapes are
checked against the SDK's client-event models in the tests (the fake Realtime server validates
every event it gets).
SDK and websocket exceptions are translated into `UpstreamError` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from openai import AsyncOpenAI, OpenAIError
from websockets.frames import apply_mask
from websockets.protocol import State


class UpstreamError(Exception):
    """The Realtime connection failed or closed; the message says how."""


class RealtimeLink(Protocol):
    async def send(self, event: dict[str, Any]) -> None: ...
    async def recv(self) -> dict[str, Any]: ...
    async def close(self) -> None: ...


class RealtimeConnector(Protocol):
    async def connect(self) -> RealtimeLink: ...


Sender = Callable[[bytes], Awaitable[None]]


def _sdk_send(connection: Any) -> Sender:
    """The SDK's `send_raw` (through its reconnect queue): the slow but always-available path."""

    async def send(data: bytes) -> None:
        await connection.send_raw(data.decode())

    return send


class _MaskKeys:
    """Client frame masking keys (RFC 6455 5.3) from the kernel's CSPRNG, 1,024 per syscall.

    websockets asks `secrets.token_bytes(4)` for every frame: one getrandom syscall per 20 ms
    of caller audio, 9 % of the server's CPU at 100 calls on a VM. The keys come from the same
    source here, read in 4 KiB blocks; each key is used once.
    """

    BLOCK = 4096

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> bytes:
        if self._at == len(self._pool):
            self._pool, self._at = os.urandom(self.BLOCK), 0
        key = self._pool[self._at : self._at + 4]
        self._at += 4
        return key


def client_text_frame(data: bytes, key: bytes) -> bytes:
    """One final, masked text frame carrying `data` (RFC 6455 5.2), as websockets would frame it."""
    n = len(data)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    return head + key + apply_mask(data, key)


class _FrameWriter:
    """Writes a text frame straight to the transport when nothing stands in the way.

    `send_raw` routes every frame through the SDK's reconnect machinery (locks, a send queue,
    receipts): about a quarter of the server's CPU at 100 calls in the load benchmark, for a
    feature callbot leaves off (it reconnects itself, PROTOCOLS.md 5.5). websockets' own `send`
    costs ~16 us a frame in its async context manager and a getrandom syscall for the mask.
    So while the connection is open, no fragmented message is in flight and the transport is
    not applying back-pressure, the frame is built here (with pooled mask keys) and written;
    with a negotiated extension (permessage-deflate) websockets frames it; otherwise `send`
    runs as usual, which waits for the buffer to drain or raises on close.
    """

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._protocol = ws.protocol
        self._keys = _MaskKeys()

    async def __call__(self, data: bytes) -> None:
        ws = self._ws
        protocol = self._protocol
        if protocol.state is State.OPEN and ws.fragmented_send_waiter is None and not ws.paused:
            if protocol.extensions:
                protocol.send_text(data)
                ws.send_data()
            else:
                ws.transport.write(client_text_frame(data, self._keys.next()))
        else:
            await ws.send(data, text=True)


def _direct_send(connection: Any) -> Sender:
    """The fastest send this SDK release allows, falling back to `send_raw`.

    The websockets connection is a private attribute of the SDK and the sans-I/O hooks are
    websockets internals, so if a release renames any of them this falls back to `send_raw`;
    tests check every path puts the same frames on the wire.
    """
    ws: Any = getattr(connection, "_connection", None)
    protocol = getattr(ws, "protocol", None)
    if all(hasattr(ws, name) for name in _FAST_PATH_NEEDS) and hasattr(protocol, "extensions"):
        return _FrameWriter(ws)
    return _sdk_send(connection)


_FAST_PATH_NEEDS = ("protocol", "transport", "send_data", "send", "fragmented_send_waiter", "paused")


class OpenAIRealtimeLink:
    def __init__(self, manager: Any, connection: Any, *, direct: bool = True) -> None:
        self._manager = manager
        self._conn = connection
        self._send = _direct_send(connection) if direct else _sdk_send(connection)
        self._closed = False

    async def send(self, event: dict[str, Any]) -> None:
        try:
            await self._send(orjson.dumps(event))
        except Exception as exc:  # websockets and SDK errors alike end the upstream
            raise UpstreamError(f"send failed: {exc!r}") from exc

    async def recv(self) -> dict[str, Any]:
        try:
            raw = await self._conn.recv_bytes()
        except Exception as exc:
            raise UpstreamError(f"connection closed: {exc!r}") from exc
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError("Realtime sent a frame that is not JSON") from exc
        if not isinstance(event, dict):
            raise UpstreamError("Realtime sent a JSON frame that is not an object")
        return event

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):  # closing a dead socket is not worth a traceback
            await self._conn.close()


class OpenAIRealtimeConnector:
    """Opens `client.realtime.connect(model=...)` sessions; reconnect is ours, not the SDK's."""

    def __init__(
        self, client: AsyncOpenAI, model: str, open_timeout_s: float = 10.0, *, direct_send: bool = True
    ) -> None:
        self._client = client
        self._model = model
        self._open_timeout_s = open_timeout_s
        self._direct_send = direct_send

    async def connect(self) -> OpenAIRealtimeLink:
        manager = self._client.realtime.connect(
            model=self._model, websocket_connection_options={"max_size": 16 * 1024 * 1024}
        )
        try:
            connection = await asyncio.wait_for(manager.enter(), timeout=self._open_timeout_s)
        except (OpenAIError, OSError, TimeoutError) as exc:
            raise UpstreamError(f"could not open the Realtime session: {exc!r}") from exc
        except Exception as exc:  # websockets.InvalidStatus and friends
            raise UpstreamError(f"could not open the Realtime session: {exc!r}") from exc
        return OpenAIRealtimeLink(manager, connection, direct=self._direct_send)
