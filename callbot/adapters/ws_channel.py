"""uvicorn's websocket protocol plus a direct text channel, for the media stream's hot path.

Through plain ASGI every websocket message becomes a dict in an `asyncio.Queue`, passes
Starlette's `WebSocket` and exception wrappers, and uvicorn stops and restarts reading the
socket around each one (two epoll updates a message). At 50 Twilio messages a second per call
that was the largest share of the Twilio side's cost in the load benchmark (bench/README.md).

`ChannelWebSocketProtocol` is uvicorn's sans-I/O protocol that also offers, through the ASGI
scope's `extensions`, a `TextChannel`. Once the app has accepted the websocket and opened the
channel, data frames go straight from the websocket parser to the app, and the app's sends go
straight to the framer and the transport, several messages in one write when it has them.
The handshake, close, ping/pong, size limits and UTF-8 checks stay with uvicorn and the
`websockets` parser. An app that doesn't open the channel, or runs under another server (or
Starlette's TestClient), just sees ASGI: `open_channel` returns None there.

Pass the class to uvicorn as `uvicorn.Config(..., ws=ChannelWebSocketProtocol)`, and only when
`probe()` passes (`callbot.adapters.fastpaths`): the class extends uvicorn internals, listed in
`TOUCHES`. When the probe fails, callbot serves with uvicorn's own protocol and plain ASGI.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from websockets.exceptions import InvalidState
from websockets.frames import apply_mask
from websockets.http11 import Request

from callbot.adapters.fastpaths import self_test_on_a_thread

if TYPE_CHECKING:
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

    _HAVE_SANSIO_PROTOCOL: bool
else:
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:  # uvicorn < 0.35 or a release that moved it: probe() says so, nothing uses the class
        WebSocketsSansIOProtocol = asyncio.Protocol
        _HAVE_SANSIO_PROTOCOL = False
    else:
        _HAVE_SANSIO_PROTOCOL = True

log = logging.getLogger("callbot.ws_channel")

EXTENSION = "callbot.text_channel"
"""The scope["extensions"] key; its value is a callable that opens the channel."""

FALLBACK = "uvicorn's own websocket protocol (plain ASGI messages)"

TOUCHES = {
    "uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol": (
        # overridden methods
        "handle_connect",
        "data_received",
        "send_receive_event_to_app",
        "connection_lost",
        # state read or written
        "config",
        "conn",
        "queue",
        "transport",
        "writable",
        "read_paused",
        "handshake_complete",
        "close_sent",
        "frames",
        "curr_msg_data_type",
        "scope",
    ),
    "uvicorn.config.Config": ("ws_max_size",),
    # websockets' documented sans-I/O API, through uvicorn's `conn`
    "websockets.server.ServerProtocol": ("send_text", "data_to_send"),
}
"""Every name of another library's internals this module touches (the contract test checks them)."""


class TextChannel:
    """One websocket's data frames as text, in and out, without ASGI messages in between."""

    HIGH_WATER = 64
    """Stop reading the socket when this many received messages wait for the app."""
    LOW_WATER = 16

    def __init__(self, protocol: ChannelWebSocketProtocol) -> None:
        self._protocol = protocol
        self._inbox: deque[str] = deque()
        self._waiter: asyncio.Future[str | None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # asked once: on Python 3.11 each ask is a getpid
        self._send_lock = asyncio.Lock()
        self._waiting = 0  # sends waiting for back-pressure or for one another
        self.closed = False
        self.max_bytes: int | None = protocol.config.ws_max_size
        """No message longer than this many bytes is delivered: the splitter hands a longer
        frame to the websockets parser, which fails the connection with 1009."""
        self.offer: Callable[[str], bool] | None = None
        """Called with each message as it is read while the app waits in `receive` (so nothing
        read earlier is still waiting for it); True when it took the message, which `receive`
        then never returns. This saves the app's task a wake-up per message. It runs inside the
        protocol's `data_received`, so it must not raise."""

    # ----- called by the protocol -----
    def deliver(self, text: str) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            offer = self.offer
            if offer is not None and offer(text):
                return
            self._waiter = None
            waiter.set_result(text)
            return
        self._inbox.append(text)
        if len(self._inbox) >= self.HIGH_WATER:
            self._protocol.pause_reading_for_channel()

    def close(self) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._waiter = None
            waiter.set_result(None)

    # ----- the app's side -----
    async def receive(self) -> str | None:
        """The next message, or None once the peer has gone (or the close handshake began)."""
        if self._inbox:
            text = self._inbox.popleft()
            if len(self._inbox) <= self.LOW_WATER:
                self._protocol.resume_reading_for_channel()
            return text
        if self.closed:
            return None
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        waiter: asyncio.Future[str | None] = loop.create_future()
        self._waiter = waiter
        return await waiter

    async def send(self, texts: Iterable[str]) -> bool:
        """Send each text as one text frame, all in one write; False if the socket is gone.

        Writes wait only while the transport applies back-pressure, and then in arrival order,
        so messages never overtake each other."""
        if self._waiting or not self._protocol.writable.is_set():
            self._waiting += 1  # counted until written: a send queued on the lock is not yet holding it
            try:
                async with self._send_lock:
                    await self._protocol.writable.wait()
                    return self._write(texts)
            finally:
                self._waiting -= 1
        return self._write(texts)

    def send_now(self, texts: Iterable[str]) -> bool | None:
        """`send` without waiting: None (nothing sent) when it would have to wait for back-pressure
        or an earlier send, else whether the socket took them."""
        if self._waiting or not self._protocol.writable.is_set():
            return None
        return self._write(texts)

    def _write(self, texts: Iterable[str]) -> bool:
        protocol = self._protocol
        if self.closed or protocol.close_sent or protocol.transport.is_closing():
            return False
        try:
            for text in texts:
                protocol.conn.send_text(text.encode())
        except InvalidState:
            return False
        protocol.transport.write(b"".join(protocol.conn.data_to_send()))
        return True


class ChannelWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's `websockets-sansio` protocol, offering a `TextChannel` as an ASGI extension."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.channel: TextChannel | None = None
        self._fast_frames = True  # frames are split here until something unusual arrives
        self._pending = b""  # the start of a frame that has not fully arrived

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # absent when the upgrade was refused
        if scope is not None:
            scope["extensions"][EXTENSION] = self._open_channel

    def _open_channel(self) -> TextChannel:
        if not self.handshake_complete:
            raise RuntimeError("accept the websocket before opening its text channel")
        if self.channel is None:
            channel = self.channel = TextChannel(self)
            # Messages that arrived before the channel opened wait in uvicorn's ASGI queue (and
            # uvicorn stopped reading after the first): hand them over in order, then read on.
            while not self.queue.empty():
                message = self.queue.get_nowait()
                if message["type"] == "websocket.receive":
                    text = message.get("text")
                    if text is None:
                        text = (message.get("bytes") or b"").decode("utf-8", "replace")
                    channel.deliver(text)
                elif message["type"] == "websocket.disconnect":
                    channel.close()
            self.resume_reading_for_channel()
        return self.channel

    def data_received(self, data: bytes) -> None:
        # Frames only follow our 101 response, so splitting them here from then on means the
        # websockets parser only ever sees whole frames: it is always at a frame boundary.
        if not self._fast_frames or not self.handshake_complete or self.close_sent:
            super().data_received(data)
            return
        buf = self._pending + data if self._pending else data
        self._pending = b""
        at = self._split_frames(buf)
        if at < len(buf):
            if self._fast_frames:
                self._pending = buf[at:]  # an incomplete frame: wait for the rest
            else:
                super().data_received(buf[at:])

    def _split_frames(self, buf: bytes) -> int:
        """Deliver the complete frames at the start of `buf`; returns where the rest starts.

        Once the channel is open, an unfragmented, uncompressed, masked text frame (all Twilio
        sends) is unmasked and handed to it here, at a fraction of the websockets parser's cost
        (bench/README.md#code-figures). Any other complete frame (ping, close, binary,
        fragments, compressed) goes to that parser whole, so it always starts at a frame
        boundary. A frame over uvicorn's `ws_max_size`
        or not UTF-8 switches this connection to the parser for good, which then fails it with
        1009 or 1007.
        """
        at, end = 0, len(buf)
        max_size = self.config.ws_max_size
        channel = self.channel
        while end - at >= 2:
            first, second = buf[at], buf[at + 1]
            length, head = second & 0x7F, at + 2
            if length == 126:  # a Twilio media message (about 300 bytes): 16-bit length
                if end - head < 2:
                    break
                length, head = (buf[head] << 8) | buf[head + 1], head + 2
            if length == 127 or not second & 0x80 or (max_size is not None and length > max_size):
                self._fast_frames = False  # huge, or unmasked (a protocol error): the parser's call
                return at
            stop = head + 4 + length
            if stop > end:
                break
            if first != 0x81 or channel is None:  # not FIN + text with no RSV bits, or no channel yet
                super().data_received(buf[at:stop])
                if self.close_sent or self.transport.is_closing():
                    self._fast_frames = False
                    return stop
            else:
                try:
                    text = apply_mask(buf[head + 4 : stop], buf[head : head + 4]).decode()
                except UnicodeDecodeError:
                    self._fast_frames = False
                    return at
                channel.deliver(text)
            at = stop
        return at

    def send_receive_event_to_app(self) -> None:
        channel = self.channel
        if channel is None:
            super().send_receive_event_to_app()
            return
        data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
        if self.close_sent:
            self.frames = []
            return
        if self.curr_msg_data_type == "text":
            try:
                text = data.decode()
            except UnicodeDecodeError:
                super().send_receive_event_to_app()  # uvicorn closes with 1007
                channel.close()
                return
        else:
            text = data.decode("utf-8", "replace")
        self.frames = []
        channel.deliver(text)

    def pause_reading_for_channel(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading_for_channel(self) -> None:
        if self.read_paused and not self.close_sent:
            self.read_paused = False
            self.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.channel is not None:
            self.channel.close()


def open_channel(scope: Mapping[str, Any]) -> TextChannel | None:
    """The websocket's text channel, if the server offers one; call after accepting."""
    opener: Callable[[], TextChannel] | None = (scope.get("extensions") or {}).get(EXTENSION)
    return opener() if opener is not None else None


# ----- the capability probe -----


class ProbeTransport(asyncio.Transport):
    """An in-memory transport: records writes, so the probe needs no socket (the channel tests
    run the protocol on it too, with `PROBE_HANDSHAKE` as the client's upgrade request)."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 9) if name in ("sockname", "peername") else default


PROBE_HANDSHAKE = (
    b"GET /probe HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def _masked_text_frame(text: bytes, key: bytes = b"\x01\x02\x03\x04") -> bytes:
    assert len(text) < 126
    return bytes([0x81, 0x80 | len(text)]) + key + apply_mask(text, key)


async def _self_test() -> str:
    """Serve one websocket through `ChannelWebSocketProtocol` in memory: handshake, a frame in
    through the splitter, one echoed out through the channel. '' when all of it works."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    received: list[str] = []
    failures: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await receive()  # websocket.connect
            await send({"type": "websocket.accept"})
            channel = open_channel(scope)
            if channel is None:
                return
            text = await channel.receive()
            if text is not None:
                received.append(text)
                await channel.send([text.upper()])
        except Exception as exc:  # reported by the probe, not logged by uvicorn as an app crash
            log.debug("twilio channel probe: the in-memory app raised", exc_info=True)
            failures.append(f"{type(exc).__name__}: {exc}")

    config = Config(app, ws=ChannelWebSocketProtocol, ws_max_size=1 << 16, log_config=None, lifespan="off")
    config.load()
    state = ServerState()
    protocol = ChannelWebSocketProtocol(config=config, server_state=state, app_state={})
    lacking = [name for name in _STATE if not hasattr(protocol, name)]
    if lacking:
        return "uvicorn's WebSocketsSansIOProtocol lacks " + ", ".join(lacking)
    transport = ProbeTransport()
    protocol.connection_made(transport)
    try:
        protocol.data_received(PROBE_HANDSHAKE)
        if not await _until(lambda: transport.written.startswith(b"HTTP/1.1 101")):
            return "the handshake did not complete"
        transport.written.clear()
        frame = _masked_text_frame(b"hello")
        protocol.data_received(frame[:3])  # a frame split across reads, as TCP may deliver it
        protocol.data_received(frame[3:])
        await _until(lambda: bool(transport.written))
    finally:
        protocol.connection_lost(None)
        if state.tasks:
            await asyncio.wait(state.tasks, timeout=1)
    if failures:
        return failures[0]
    if received != ["hello"]:
        return f"the app received {received!r} instead of ['hello'] through the channel"
    if bytes(transport.written) != b"\x81\x05HELLO":
        return f"the channel wrote {bytes(transport.written)!r} instead of one text frame"
    return ""


async def _until(condition: Callable[[], bool], turns: int = 50) -> bool:
    for _ in range(turns):
        if condition():
            return True
        await asyncio.sleep(0)
    return condition()


_STATE = TOUCHES["uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol"][4:-1]
"""The instance attributes read or written ("scope" comes with the upgrade)."""


def probe() -> str:
    """Check the uvicorn internals `ChannelWebSocketProtocol` uses, then run it once in memory.

    Returns '' when the fast path works on the installed uvicorn and websockets, else what is
    missing or wrong. Runs on a thread of its own, so it works inside a running event loop too."""
    if not _HAVE_SANSIO_PROTOCOL:
        return "uvicorn has no protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol"
    from uvicorn.config import Config

    methods = TOUCHES["uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol"][:4]
    lacking = [name for name in methods if not callable(getattr(WebSocketsSansIOProtocol, name, None))]
    if not hasattr(Config(lambda: None, log_config=None), "ws_max_size"):
        lacking.append("Config.ws_max_size")
    if lacking:
        return "uvicorn lacks " + ", ".join(lacking)
    return self_test_on_a_thread("twilio-channel", _self_test)
