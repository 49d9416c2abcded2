"""The OpenAI Realtime adapter: one GA websocket session per call through the official SDK.

Events travel as plain dicts. Incoming frames are read raw (`recv_bytes`) and parsed with
orjson instead of the SDK's pydantic union: the audio deltas are most of the traffic and the
typed parse costs more than the rest of the bridge (docs/audio.md §9). Outgoing events are
framed straight onto the websocket when it can take them (`_FrameWriter`), and incoming plain
text frames can be handed to the bridge as they are read (`_FrameTap`, `offer_to`): together the
`realtime_frames` fast path, guarded by `probe()`; otherwise the SDK's public `send_raw` and
`recv_bytes`. Event shapes are checked against the SDK's client-event models in the tests (the
fake Realtime server validates every event it gets).
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

FALLBACK = "the SDK's send_raw and recv_bytes"

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
"""websockets' max_size for a Realtime session; the frame tap hands any larger frame to websockets,
which refuses it (1009)."""

TOUCHES = {
    # The SDK's connection keeps its websockets connection here (private, no public accessor).
    "openai.resources.realtime.realtime.AsyncRealtimeConnection": ("_connection",),
    # websockets.asyncio: the connection's asyncio transport and its sans-I/O protocol, whose
    # documented `state` `_FrameWriter.ready` reads without the connection's property in between
    # (undocumented attributes); the rest (`state`, `response`, `send`, and the asyncio.Protocol
    # callbacks `_FrameTap` forwards to) is documented API.
    "websockets.asyncio.client.ClientConnection": ("transport", "protocol"),
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
        self._protocol = ws.protocol  # its sans-I/O state: `ws.state` is a property that reads it
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
            and self._protocol.state is State.OPEN
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


class _FrameTap(asyncio.Protocol):
    """The transport's protocol in front of websockets' `ClientConnection`: it offers each plain
    server text frame to the link's handler as it is read, and hands every other frame, and every
    frame the handler declines, whole to the connection's `data_received`, so websockets' parser
    always starts at a frame boundary and answers pings, closes and fragments as before.

    A frame is offered only while the link's `recv` is suspended (`waiting`) with nothing handed to
    websockets since it began waiting (`forwarded`), which is when websockets holds no message the
    bridge has not read: so the bridge sees events in the order they came. This saves the
    Realtime pump's task a wake-up and websockets' frame parser, assembler and `recv` chain for
    each event (the figures: bench/README.md#code-figures).
    """

    def __init__(self, ws: ClientConnection, max_size: int | None) -> None:
        self._ws = ws
        self._max = max_size
        self._pending = b""
        self._on = True
        self.offer: Callable[[bytes], bool] | None = None
        self.waiting = False
        self.forwarded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._ws.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._ws.connection_lost(exc)

    def pause_writing(self) -> None:
        self._ws.pause_writing()

    def resume_writing(self) -> None:
        self._ws.resume_writing()

    def eof_received(self) -> None:
        self._ws.eof_received()  # websockets' returns None too: the transport closes itself

    def data_received(self, data: bytes) -> None:
        if not self._on:
            self._ws.data_received(data)
            return
        buf = self._pending + data if self._pending else data
        self._pending = b""
        at = self._split(buf)
        if at < len(buf):
            if self._on:
                self._pending = buf[at:]  # an incomplete frame: wait for the rest
            else:
                self._ws.data_received(buf[at:])

    def _split(self, buf: bytes) -> int:
        """Handle the complete frames at the start of `buf`; returns where the rest starts. A
        masked or oversized frame, or a connection no longer open, switches the tap off for good:
        websockets then reads everything and fails or closes the connection as it would have."""
        at, end = 0, len(buf)
        while end - at >= 2:
            first, second = buf[at], buf[at + 1]
            length, head = second & 0x7F, at + 2
            if second & 0x80:  # a server never masks (RFC 6455 5.1): websockets fails it with 1002
                self._on = False
                return at
            if length == 126:  # an audio delta: 16-bit length
                if end - head < 2:
                    break
                length, head = (buf[head] << 8) | buf[head + 1], head + 2
            elif length == 127:
                if end - head < 8:
                    break
                length, head = int.from_bytes(buf[head : head + 8], "big"), head + 8
            if self._max is not None and length > self._max:  # websockets closes with 1009
                self._on = False
                return at
            stop = head + length
            if stop > end:
                break
            offer = self.offer
            # 0x81: FIN + text, no RSV bits (no extension is negotiated: the SDK turns compression off)
            takes = first == 0x81 and offer is not None and self.waiting and not self.forwarded
            if not (takes and offer is not None and offer(buf[head:stop])):
                if first & 0x0F < 8:  # a data frame: websockets now holds a message for `recv`
                    self.forwarded = True
                self._ws.data_received(buf[at:stop])
                if self._ws.state is not State.OPEN:
                    self._on = False
                    return stop
            at = stop
        return at


_TRANSPORT_NEEDS = ("write", "get_write_buffer_size", "get_write_buffer_limits", "set_protocol")


def _websocket(connection: Any) -> ClientConnection | None:
    """The SDK connection's websocket, if it is one whose transport the fast path knows."""
    ws = getattr(connection, "_connection", None)
    transport = getattr(ws, "transport", None)
    if isinstance(ws, ClientConnection) and all(
        callable(getattr(transport, n, None)) for n in _TRANSPORT_NEEDS
    ):
        return ws
    return None


def _direct_send(connection: Any) -> Sender | None:
    """The frame writer over the SDK connection's websocket, or None if it has none we know."""
    ws = _websocket(connection)
    return _FrameWriter(ws) if ws is not None else None


def _tap(connection: Any, max_size: int | None) -> _FrameTap | None:
    """Put a `_FrameTap` in front of the SDK connection's websocket, or None if it has none we know."""
    ws = _websocket(connection)
    if ws is None:
        return None
    tap = _FrameTap(ws, max_size)
    ws.transport.set_protocol(tap)
    return tap


class _ProbeTransport(asyncio.WriteTransport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.protocol: asyncio.BaseProtocol | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

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
    from websockets.server import ServerProtocol
    from websockets.streams import StreamReader
    from websockets.uri import parse_uri

    protocol = ClientProtocol(parse_uri("ws://127.0.0.1/v1/realtime"))
    ws = ClientConnection(protocol)
    transport = _ProbeTransport()
    ws.connection_made(transport)
    request = protocol.connect()  # the opening handshake, answered by websockets' own server side
    protocol.send_request(request)
    ws.data_received(ServerProtocol().accept(request).serialize())
    if ws.state is not State.OPEN:
        return f"the in-memory opening handshake left the connection {ws.state.name}"
    del transport.written[:]  # the request
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
    return _tap_self_test(ws, transport, sdk_connection)


def _tap_self_test(ws: ClientConnection, transport: _ProbeTransport, sdk_connection: Any) -> str:
    """A text frame through the tap reaches the handler; a ping goes to websockets, which answers it."""
    tap = _tap(sdk_connection, 1 << 20)
    if tap is None or transport.protocol is not tap:
        return "the websocket's transport did not take the frame tap as its protocol"
    taken: list[bytes] = []

    def take(raw: bytes) -> bool:
        taken.append(raw)
        return True

    tap.offer, tap.waiting = take, True
    before = len(transport.written)
    tap.data_received(b"\x81\x02{}" + b"\x89\x04ping")
    if taken != [b"{}"]:
        return f"the tap offered {taken!r} for one text frame"
    if not tap.forwarded and ws.state is State.OPEN and len(transport.written) > before:
        return ""
    return "the ping did not reach websockets, or it wrote no pong"


def probe() -> str:
    """Frame one event through the SDK's connection in memory and parse it back with websockets.

    '' when the fast path works on the installed openai and websockets, else what is wrong."""
    return self_test_on_a_thread("realtime-frames", _self_test)


class OpenAIRealtimeLink:
    def __init__(self, manager: Any, connection: Any, send: Sender, tap: _FrameTap | None = None) -> None:
        self._manager = manager
        self._conn = connection
        self._send = send
        self._writer = send if isinstance(send, _FrameWriter) else None
        self._tap = tap
        self._closed = False

    def offer_to(self, handler: Callable[[dict[str, Any]], bool] | None) -> bool:
        """Offer each event to `handler` as it is read, while `recv` waits for one (so it comes
        after everything `recv` returned); True from it takes the event, which `recv` then never
        returns. A frame that is not a JSON object is never offered: `recv` raises for it as
        always. Returns False (and does nothing) without the fast path's frame tap."""
        tap = self._tap
        if tap is None:
            return False
        if handler is None:
            tap.offer = None
            return True

        def offer(raw: bytes) -> bool:
            try:
                event = orjson.loads(raw)
            except orjson.JSONDecodeError:
                return False
            return type(event) is dict and handler(event)

        tap.offer = offer
        return True

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
        tap = self._tap
        if tap is not None:  # from here until recv_bytes returns, a frame may be offered (`_FrameTap`)
            tap.forwarded, tap.waiting = False, True
        try:
            raw = await self._conn.recv_bytes()
        except Exception as exc:
            raise UpstreamError(f"connection closed: {exc!r}") from exc
        finally:
            if tap is not None:
                tap.waiting = False
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
        if self._tap is not None:
            self._tap.offer = None
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
            websocket_connection_options={"max_size": MAX_MESSAGE_BYTES},
        )
        try:
            connection = await asyncio.wait_for(manager.enter(), timeout=self._open_timeout_s)
        except (OpenAIError, OSError, TimeoutError) as exc:
            raise UpstreamError(f"could not open the Realtime session: {exc!r}") from exc
        except Exception as exc:  # websockets.InvalidStatus and friends
            raise UpstreamError(f"could not open the Realtime session: {exc!r}") from exc
        send = self._sender(connection)
        tap = _tap(connection, MAX_MESSAGE_BYTES) if isinstance(send, _FrameWriter) else None
        return OpenAIRealtimeLink(manager, connection, send, tap)

    def _sender(self, connection: Any) -> Sender:
        fast = _direct_send(connection) if self._direct_send else None
        if fast is not None:
            log.debug("Realtime session open: frames written and read directly")
            return fast
        if self._direct_send and not self._warned:
            self._warned = True
            log.warning("a Realtime connection has no websocket the fast path knows; using %s", FALLBACK)
        log.debug("Realtime session open: through %s", FALLBACK)
        return _sdk_send(connection)
