"""The OpenAI Realtime adapter: one GA websocket session per call through the official SDK.

Events travel as plain dicts. Incoming frames are read raw (`recv_bytes`) and parsed with
orjson instead of the SDK's pydantic union: the audio deltas are most of the traffic and the
typed parse costs more than the rest of the bridge (audio.md section 5). Outgoing events go
through `send_raw` for the same reason; their shapes are checked against the SDK's
client-event models in the tests (the fake Realtime server validates every event it gets).
SDK and websocket exceptions are translated into `UpstreamError` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import orjson
from openai import AsyncOpenAI, OpenAIError


class UpstreamError(Exception):
    """The Realtime connection failed or closed; the message says how."""


class RealtimeLink(Protocol):
    async def send(self, event: dict[str, Any]) -> None: ...
    async def recv(self) -> dict[str, Any]: ...
    async def close(self) -> None: ...


class RealtimeConnector(Protocol):
    async def connect(self) -> RealtimeLink: ...


def _direct_send(connection: Any) -> Callable[[str], Awaitable[None]]:
    """The websocket's own send, skipping the SDK's reconnect queue when it can be reached.

    `send_raw` routes every frame through the SDK's reconnect machinery (locks, a send queue,
    receipts, the current task lookup): about a quarter of the server's CPU at 100 calls in
    the load benchmark, for a feature callbot leaves off (it reconnects itself, PROTOCOLS.md
    5.5). The underlying websockets connection is a private attribute of the SDK, so if a
    release renames it this falls back to `send_raw`; tests check both paths send the same.
    """
    raw = getattr(connection, "_connection", None)
    send = getattr(raw, "send", None)
    return send if callable(send) else connection.send_raw


class OpenAIRealtimeLink:
    def __init__(self, manager: Any, connection: Any, *, direct: bool = True) -> None:
        self._manager = manager
        self._conn = connection
        self._send = _direct_send(connection) if direct else connection.send_raw
        self._closed = False

    async def send(self, event: dict[str, Any]) -> None:
        try:
            await self._send(orjson.dumps(event).decode())
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
