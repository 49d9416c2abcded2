"""The OpenAI Realtime adapter: one GA websocket session per call through the official SDK.

Events travel as plain dicts. Incoming frames are read raw (`recv_bytes`) and parsed with
orjson instead of the SDK's pydantic union: the audio deltas are most of the traffic and the
typed parse costs more than the rest of the bridge (docs/audio.md §9). Outgoing events are
framed straight onto the websocket when it can take them (`_FrameWriter`, the `realtime_frames`
fast path, guarded by `probe()`; otherwise the SDK's public `send_raw`); their shapes are
checked against the SDK's client-event models in the tests (the fake Realtime server validates
every event it gets).
SDK and websocket exceptions are translated into `UpstreamError` here and nowhere else. The
connector and its links implement `callbot.ports.RealtimeConnector` and `RealtimeLink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from openai import AsyncOpenAI, OpenAIError
from websockets.asyncio.client import ClientConnection
from websockets.frames import apply_mask
from websockets.protocol import State

from callbot.adapters.fastpaths import self_test_on_a_thread
from callbot.errors import UpstreamError

log = logging.getLogger("callbot.realtime")


Sender = Callable[[bytes], Awaitable[None]]

FALLBACK = "the SDK's send_raw"

TOUCHES = {
    # The SDK's connection keeps its websockets connection here (private, no public accessor).
    "openai.resources.realtime.realtime.AsyncRealtimeConnection": ("_connection",),
    # websockets.asyncio: the connection's asyncio transport (undocumented attribute); the rest
    # (`state`, `response`, `send`) is documented API.
    "websockets.asyncio.client.ClientConnection": ("transport",),
}
"""Every name of another library's internals this module touches (the contract test checks them)."""


def _sdk_send(connection: Any) -> Sender:
    """The SDK's public `send_raw` (through its reconnect queue): slower, always available."""

    async def send(data: bytes) -> None:
        await connection.send_raw(data.decode())

    return send


class _MaskKeys:
    """Client frame masking keys (RFC 6455 5.3) from the kernel's CSPRNG, 1,024 per syscall.

    websockets asks `secrets.token_bytes(4)` for every frame: one getrandom syscall per 20 ms of
    caller audio (its cost: bench/README.md#code-figures). The keys come from the same source here, read in
    4 KiB blocks; each key is used once.
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
    receipts), a feature callbot leaves off (it reconnects itself, docs/protocols.md §12.2), and
    websockets' own `send` costs an async context manager and a getrandom syscall per frame
    (the figures: bench/README.md#code-figures). So while the connection is open, negotiated no extension
    (the SDK turns compression off) and the transport's buffer is below its high-water mark,
    the frame is built here (with pooled mask keys) and written; otherwise websockets' `send`
    runs, which waits for the buffer to drain or raises on close. Frames stay in order either
    way: both append to the same transport buffer, in call order.
    """

    def __init__(self, ws: ClientConnection) -> None:
        self._ws = ws
        self._transport: Any = ws.transport  # asyncio's or uvloop's (which is no WriteTransport subclass)
        # websockets sets the transport's limits once, when the connection opens (before this)
        self._high_water: int = self._transport.get_write_buffer_limits()[1]
        response = ws.response
        self._plain = response is None or "Sec-WebSocket-Extensions" not in response.headers
        self._keys = _MaskKeys()

    def ready(self) -> bool:
        """A frame written now goes straight to the transport (`write`), without waiting."""
        return (
            self._plain
            and self._ws.state is State.OPEN
            and self._transport.get_write_buffer_size() < self._high_water
        )

    def write(self, data: bytes) -> None:
        """Frame and write at once; only when `ready()` says so."""
        self._transport.write(client_text_frame(data, self._keys.next()))

    async def __call__(self, data: bytes) -> None:
        if self.ready():
            self.write(data)
        else:
            await self._ws.send(data, text=True)


_TRANSPORT_NEEDS = ("write", "get_write_buffer_size", "get_write_buffer_limits")


def _direct_send(connection: Any) -> Sender | None:
    """The frame writer over the SDK connection's websocket, or None if it has none we know."""
    ws = getattr(connection, "_connection", None)
    transport = getattr(ws, "transport", None)
    if isinstance(ws, ClientConnection) and all(
        callable(getattr(transport, n, None)) for n in _TRANSPORT_NEEDS
    ):
        return _FrameWriter(ws)
    return None


class _ProbeTransport(asyncio.WriteTransport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (16384, 65536)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return False


async def _self_test() -> str:
    from openai.resources.realtime.realtime import AsyncRealtimeConnection
    from websockets.client import ClientProtocol
    from websockets.frames import Frame, Opcode
    from websockets.streams import StreamReader
    from websockets.uri import parse_uri

    ws = ClientConnection(ClientProtocol(parse_uri("ws://127.0.0.1/v1/realtime")))
    transport = _ProbeTransport()
    ws.connection_made(transport)
    ws.protocol.state = State.OPEN  # as after the opening handshake
    sdk_connection = AsyncRealtimeConnection(ws)
    send = _direct_send(sdk_connection)
    if send is None:
        return "AsyncRealtimeConnection keeps no websockets ClientConnection with a transport in _connection"
    await send(b'{"type":"response.cancel"}')
    reader = StreamReader()
    reader.feed_data(bytes(transport.written))
    parser = Frame.parse(reader.read_exact, mask=True)
    try:
        next(parser)
    except StopIteration as done:
        frame: Frame = done.value
    else:
        return "the frame written did not parse as one whole websocket frame"
    if frame.opcode is not Opcode.TEXT or frame.data != b'{"type":"response.cancel"}':
        return f"the frame written parsed as {frame!r}"
    return ""


def probe() -> str:
    """Frame one event through the SDK's connection in memory and parse it back with websockets.

    '' when the fast path works on the installed openai and websockets, else what is wrong."""
    return self_test_on_a_thread("realtime-frames", _self_test)


class OpenAIRealtimeLink:
    def __init__(self, manager: Any, connection: Any, send: Sender) -> None:
        self._manager = manager
        self._conn = connection
        self._send = send
        self._writer = send if isinstance(send, _FrameWriter) else None
        self._closed = False

    async def send(self, event: dict[str, Any]) -> None:
        try:
            await self._send(orjson.dumps(event))
        except Exception as exc:  # websockets and SDK errors alike end the upstream
            raise UpstreamError(f"send failed: {exc!r}") from exc

    def send_now(self, event: dict[str, Any]) -> bool:
        """Write the event at once when the fast path can take it, else return False (nothing was
        sent: `send` must be awaited). Always False without the fast path (the SDK's `send_raw`)."""
        writer = self._writer
        if writer is None or not writer.ready():
            return False
        try:
            writer.write(orjson.dumps(event))
        except Exception as exc:
            raise UpstreamError(f"send failed: {exc!r}") from exc
        return True

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
        self,
        client: AsyncOpenAI,
        model: str,
        open_timeout_s: float = 10.0,
        *,
        direct_send: bool = True,
        extra_query: Callable[[], dict[str, str]] | None = None,
    ) -> None:
        self._client = client
        self._model = model
        self._open_timeout_s = open_timeout_s
        self._direct_send = direct_send
        """Use the `realtime_frames` fast path (when its probe passed, `fastpaths`)."""
        self._extra_query = extra_query
        """Query parameters for each session's URL, asked for at each connect (the load bench
        names the call there, for its fake's bookkeeping)."""
        self._warned = False

    async def connect(self) -> OpenAIRealtimeLink:
        manager = self._client.realtime.connect(
            model=self._model,
            extra_query=self._extra_query() if self._extra_query is not None else {},
            websocket_connection_options={"max_size": 16 * 1024 * 1024},
        )
        try:
            connection = await asyncio.wait_for(manager.enter(), timeout=self._open_timeout_s)
        except (OpenAIError, OSError, TimeoutError) as exc:
            raise UpstreamError(f"could not open the Realtime session: {exc!r}") from exc
        except Exception as exc:  # websockets.InvalidStatus and friends
            raise UpstreamError(f"could not open the Realtime session: {exc!r}") from exc
        return OpenAIRealtimeLink(manager, connection, self._sender(connection))

    def _sender(self, connection: Any) -> Sender:
        fast = _direct_send(connection) if self._direct_send else None
        if fast is not None:
            log.debug("Realtime session open: frames written directly")
            return fast
        if self._direct_send and not self._warned:
            self._warned = True
            log.warning("a Realtime connection has no websocket the fast path knows; using %s", FALLBACK)
        log.debug("Realtime session open: sending through %s", FALLBACK)
        return _sdk_send(connection)
