"""A minimal RFC 6455 WebSocket transport for the load benchmark's load side.

The load side (bench/load_fake.py, bench/load_callers.py) has to stay far cheaper than the
server it measures, and per message the `websockets` asyncio connection costs more Python than
the work the message stands for (a task, a queue, a lock, a generator-based parser). This
module is a plain `asyncio.Protocol` with a hand-written frame codec: frames are parsed and
handed to `on_text` synchronously inside `data_received`, and `send_text` writes the frame
straight to the transport. Nothing is queued and no task runs per connection.

It is deliberately small but strict, because the peers are real stacks (uvicorn's websockets
implementation on the server, the `websockets` client inside the OpenAI SDK) that reject
malformed frames:

* opening handshake: the client sends a GET with a random `Sec-WebSocket-Key` and checks the
  101's `Upgrade`, `Connection` and `Sec-WebSocket-Accept`; the server checks the request the
  same way (`accept_request` may refuse it with an HTTP error first) and answers 101. No
  extension (permessage-deflate) or subprotocol is offered or accepted;
* data frames: text and binary, unfragmented or fragmented (continuation frames), payload
  lengths in all three encodings; client frames are masked with a fresh random key, server
  frames are not, and each side rejects the other's wrong masking, reserved bits, unknown
  opcodes, fragmented or oversized control frames, invalid UTF-8 in text, messages above
  `max_size` (close codes 1002, 1007, 1009, as RFC 6455 section 7.4.1 says);
* ping is answered with a pong carrying the same payload (both uvicorn and the `websockets`
  client ping every 20 s by default); pongs are ignored;
* closing handshake: the side that closes sends a close frame and waits for the peer's; the
  server then closes TCP, the client waits for the server to do so (RFC 6455 section 7.1.1),
  with `close_timeout` as a bound.

Not implemented, because no peer here uses it: extensions, subprotocols, TLS, proxies,
redirects, HTTP/1.1 upgrade bodies.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import struct
from time import monotonic_ns
from typing import Any
from urllib.parse import urlsplit

from websockets.speedups import apply_mask

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA_OPS = frozenset({OP_CONT, OP_TEXT, OP_BINARY})
_CONTROL_OPS = frozenset({OP_CLOSE, OP_PING, OP_PONG})

CONNECTING, OPEN, CLOSING, CLOSED = range(4)

_PACK_16 = struct.Struct("!BBH").pack
_PACK_64 = struct.Struct("!BBQ").pack
_MAX_HEADER_BYTES = 16 * 1024


_rand32 = random.Random(os.urandom(32)).getrandbits
"""Masking keys come from a Mersenne Twister seeded from os.urandom: a fresh key per frame for
~0.1 µs instead of ~0.6 µs for os.urandom(4). (RFC 6455 wants keys an attacker cannot predict,
to protect proxies from cache poisoning; between two local processes only freshness matters.)"""


def mask_key() -> bytes:
    return _rand32(32).to_bytes(4, "little")


def accept_key(key: str | bytes) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 section 4.2.2)."""
    raw = key.encode("ascii") if isinstance(key, str) else key
    return base64.b64encode(hashlib.sha1(raw + GUID).digest()).decode("ascii")


def encode_frame(opcode: int, payload: bytes, *, mask: bool, fin: bool = True) -> bytes:
    """One frame. `mask=True` (client to server) masks the payload with a fresh random key."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if mask else 0
    if n < 126:
        header = bytes((b0, mbit | n))
    elif n < 65536:
        header = _PACK_16(b0, mbit | 126, n)
    else:
        header = _PACK_64(b0, mbit | 127, n)
    if mask:
        key = _rand32(32).to_bytes(4, "little")
        return header + key + apply_mask(payload, key)
    return header + payload


def close_payload(code: int | None, reason: str = "") -> bytes:
    """Body of a close frame: empty, or a 2-byte code and a UTF-8 reason."""
    if code is None:
        return b""
    return struct.pack("!H", code) + reason.encode("utf-8")[:123]


def _valid_close_code(code: int) -> bool:
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or (
        3000 <= code < 5000
    )


class ProtocolError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}")
        self.code = code
        self.reason = reason


class HandshakeError(Exception):
    """The opening handshake failed; `status` is the HTTP status the server answered (or None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def parse_http_head(head: bytes) -> tuple[str, dict[str, str]]:
    """Start line and headers (names lower-cased; repeated headers joined with ', ')."""
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HandshakeError(f"malformed header line {line!r}")
        key = name.lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return lines[0], headers


def _has_token(value: str | None, token: str) -> bool:
    return value is not None and token in (part.strip().lower() for part in value.split(","))


class WsProtocol(asyncio.Protocol):
    """Shared frame machinery of `WsClient` and `WsServer`; subclasses override the `on_*` hooks.

    Hooks run synchronously inside `data_received`: `on_open()` once the handshake is done,
    `on_text(text, now_ns)` per text message (`now_ns` = `time.monotonic_ns()` taken when the
    bytes carrying it were read; 0 unless `timestamps` is set) or, to skip the str decode,
    `on_text_bytes(data, now_ns)`; `on_binary(data)`, `on_close_frame(code, reason)` when the
    peer's close frame arrives, and `on_closed()` once the TCP connection is gone (`close_code`
    then says how it ended: the peer's code, or 1006 without a close frame). Messages keep being
    delivered after our own close frame went out, until the peer's close frame arrives.
    """

    is_client = False
    max_size: int | None = 16 * 2**20
    close_timeout = 2.0
    timestamps = False

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.state = CONNECTING
        self._buf = b""
        self._frag_op: int | None = None
        self._frag: list[bytes] = []
        self._frag_len = 0
        self._plain = True  # no fragmented message in progress and no close frame received
        self.close_code: int | None = None
        """The code of the peer's close frame (1005 if it had none); 1006 if none arrived."""
        self.close_reason = ""
        self.close_sent = False
        self.close_rcvd = False
        self._close_timer: asyncio.TimerHandle | None = None
        self.closed_waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # ------------------------------------------------------------------ hooks

    def on_open(self) -> None:
        pass

    def on_text_bytes(self, data: bytes, now_ns: int) -> None:
        """A complete text message as its UTF-8 bytes. This default checks the UTF-8 and calls
        `on_text`; an override that skips the decode must still fail invalid UTF-8 (`invalid_utf8`)."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(1007, "invalid UTF-8 in a text message") from None
        self.on_text(text, now_ns)

    def invalid_utf8(self) -> None:
        raise ProtocolError(1007, "invalid UTF-8 in a text message")

    def on_text(self, text: str, now_ns: int) -> None:
        pass

    def on_binary(self, data: bytes) -> None:
        pass

    def on_close_frame(self, code: int | None, reason: str) -> None:
        pass

    def on_closed(self) -> None:
        pass

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = CLOSED
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self.close_code is None:
            self.close_code = 1006
        try:
            self.on_closed()
        finally:
            if not self.closed_waiter.done():
                self.closed_waiter.set_result(None)

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def data_received(self, data: bytes) -> None:
        if self.state == CONNECTING:
            self._handshake_data(data)
            return
        if self.state == CLOSED:
            return
        if self._buf:
            data = self._buf + data
            self._buf = b""
        try:
            self._parse(data)
        except ProtocolError as exc:
            self.fail(exc.code, exc.reason)

    # ------------------------------------------------------------------ frames

    def _parse(self, data: bytes) -> None:
        now = monotonic_ns() if self.timestamps else 0
        pos = 0
        end = len(data)
        mask_bit = 0 if self.is_client else 0x80  # clients must mask, servers must not
        while end - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            if b1 & 0x80 != mask_bit:
                raise ProtocolError(1002, "incorrect masking")
            length = b1 & 0x7F
            head = pos + 2
            if length >= 126:
                if length == 126:
                    if end - head < 2:
                        break
                    length = (data[head] << 8) | data[head + 1]
                    head += 2
                else:
                    if end - head < 8:
                        break
                    length = int.from_bytes(data[head : head + 8], "big")
                    head += 8
                if self.max_size is not None and length > self.max_size:
                    raise ProtocolError(1009, f"frame of {length} bytes exceeds {self.max_size} bytes")
            if mask_bit:
                stop = head + 4 + length
                if stop > end:
                    break
                payload = apply_mask(data[head + 4 : stop], data[head : head + 4])
            else:
                stop = head + length
                if stop > end:
                    break
                payload = data[head:stop]
            pos = stop
            if b0 == 0x81 and self._plain:  # FIN + text, no reserved bits, not inside a fragmented message
                self.on_text_bytes(payload, now)
            else:
                if b0 & 0x70:
                    raise ProtocolError(1002, "reserved bits must be 0")
                self._frame(b0 & 0x0F, bool(b0 & 0x80), payload, now)
            if self.state == CLOSED or self.transport is None:
                return
        if pos < end:
            self._buf = data[pos:]

    def _frame(self, opcode: int, fin: bool, payload: bytes, now: int) -> None:
        if opcode in _CONTROL_OPS:
            if not fin:
                raise ProtocolError(1002, "fragmented control frame")
            if len(payload) > 125:
                raise ProtocolError(1002, "control frame too long")
            if opcode == OP_PING:
                if self.state == OPEN:
                    self._write(encode_frame(OP_PONG, payload, mask=self.is_client))
            elif opcode == OP_CLOSE:
                self._close_frame(payload)
            return
        if opcode not in _DATA_OPS:
            raise ProtocolError(1002, f"invalid opcode {opcode}")
        if self.close_rcvd:
            raise ProtocolError(1002, "data frame after a close frame")
        if opcode == OP_CONT:
            if self._frag_op is None:
                raise ProtocolError(1002, "unexpected continuation frame")
        else:
            if self._frag_op is not None:
                raise ProtocolError(1002, "expected a continuation frame")
            self._frag_op = opcode
            self._plain = False
        self._frag.append(payload)
        self._frag_len += len(payload)
        if self.max_size is not None and self._frag_len > self.max_size:
            raise ProtocolError(1009, f"message exceeds limit of {self.max_size} bytes")
        if not fin:
            return
        message = b"".join(self._frag)
        kind = self._frag_op
        self._frag_op, self._frag, self._frag_len = None, [], 0
        self._plain = not self.close_rcvd
        if kind == OP_TEXT:
            self.on_text_bytes(message, now)
        else:
            self.on_binary(message)

    def _close_frame(self, payload: bytes) -> None:
        code: int | None = None
        reason = ""
        if len(payload) == 1:
            raise ProtocolError(1002, "close frame with a 1-byte payload")
        if len(payload) >= 2:
            code = int.from_bytes(payload[:2], "big")
            if not _valid_close_code(code):
                raise ProtocolError(1002, f"invalid close code {code}")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError(1007, "invalid UTF-8 in the close reason") from None
        self.close_rcvd = True
        self._plain = False
        self.close_code = 1005 if code is None else code
        self.close_reason = reason
        self.on_close_frame(code, reason)
        if not self.close_sent:
            self.close_sent = True
            self._write(encode_frame(OP_CLOSE, close_payload(code), mask=self.is_client))
        self.state = CLOSING
        self._after_close_exchange()

    def _after_close_exchange(self) -> None:
        """Both close frames are out: the server closes TCP; the client waits for it (bounded)."""
        if self.transport is None:
            return
        if self.is_client:
            self._arm_close_timer()
        else:
            self.transport.close()

    def _arm_close_timer(self) -> None:
        if self._close_timer is None and self.transport is not None:
            self._close_timer = asyncio.get_running_loop().call_later(self.close_timeout, self.abort)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # ------------------------------------------------------------------ API

    @property
    def open(self) -> bool:
        return self.state == OPEN

    def send_text(self, text: bytes | str) -> bool:
        """Send one text message (bytes must be UTF-8); False once the connection is closing."""
        if self.state != OPEN:
            return False
        payload = text.encode("utf-8") if isinstance(text, str) else text
        n = len(payload)
        if self.is_client:  # encode_frame, inlined for the callers' 50 frames per second per call
            key = _rand32(32).to_bytes(4, "little")
            if n < 126:
                header = bytes((0x81, 0x80 | n))
            elif n < 65536:
                header = _PACK_16(0x81, 0xFE, n)
            else:
                header = _PACK_64(0x81, 0xFF, n)
            self.transport.write(header + key + apply_mask(payload, key))  # type: ignore[union-attr]
        else:
            self.transport.write(encode_frame(OP_TEXT, payload, mask=False))  # type: ignore[union-attr]
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake (no-op if it already started)."""
        if self.state != OPEN:
            return
        self.state = CLOSING
        self.close_sent = True
        self._write(encode_frame(OP_CLOSE, close_payload(code, reason), mask=self.is_client))
        self._arm_close_timer()

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 section 7.1.7): send a close frame if possible, drop TCP."""
        if self.state == OPEN and not self.close_sent:
            self.close_sent = True
            self._write(encode_frame(OP_CLOSE, close_payload(code, reason), mask=self.is_client))
        self.state = CLOSING
        if self.close_code is None:
            self.close_code = 1006
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self.closed_waiter)

    # ------------------------------------------------------------------ handshake

    def _handshake_data(self, data: bytes) -> None:
        self._buf += data
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > _MAX_HEADER_BYTES:
                self._handshake_failed(HandshakeError("HTTP head too long"))
            return
        head, rest = self._buf[:end], self._buf[end + 4 :]
        self._buf = b""
        try:
            self._handshake(head)
        except HandshakeError as exc:
            self._handshake_failed(exc)
            return
        self.state = OPEN
        self.on_open()
        if rest and self.state == OPEN:
            self.data_received(rest)

    def _handshake(self, head: bytes) -> None:
        raise NotImplementedError

    def _handshake_failed(self, exc: HandshakeError) -> None:
        raise NotImplementedError


class WsClient(WsProtocol):
    """Client side: `await connect(lambda: MyClient(...), url, headers)` returns the open protocol."""

    is_client = True
    max_size: int | None = None

    def __init__(self) -> None:
        super().__init__()
        self._key = base64.b64encode(os.urandom(16)).decode("ascii")
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.response_headers: dict[str, str] = {}

    def send_request(self, host: str, path: str, headers: dict[str, str]) -> None:
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {host}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {self._key}",
            "Sec-WebSocket-Version: 13",
        ]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        assert self.transport is not None
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def _handshake(self, head: bytes) -> None:
        start, headers = parse_http_head(head)
        self.response_headers = headers
        parts = start.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.1") or not parts[1].isdigit():
            raise HandshakeError(f"malformed status line {start!r}")
        status = int(parts[1])
        if status != 101:
            raise HandshakeError(f"server answered HTTP {status}", status)
        if not _has_token(headers.get("upgrade"), "websocket"):
            raise HandshakeError("101 without Upgrade: websocket", status)
        if not _has_token(headers.get("connection"), "upgrade"):
            raise HandshakeError("101 without Connection: Upgrade", status)
        if headers.get("sec-websocket-accept") != accept_key(self._key):
            raise HandshakeError("wrong Sec-WebSocket-Accept", status)
        if headers.get("sec-websocket-extensions"):
            raise HandshakeError("server accepted an extension we did not offer", status)
        if headers.get("sec-websocket-protocol"):
            raise HandshakeError("server chose a subprotocol we did not offer", status)
        if not self.opened.done():
            self.opened.set_result(None)

    def _handshake_failed(self, exc: HandshakeError) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        self.state = CLOSED
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(
                HandshakeError(f"connection closed during the handshake: {exc!r}")
                if exc is not None
                else HandshakeError("connection closed during the handshake")
            )
        super().connection_lost(exc)


async def connect(
    factory: Any, url: str, headers: dict[str, str] | None = None, *, open_timeout: float = 10.0
) -> Any:
    """Open a `WsClient` made by `factory()` on `url` (ws:// only) and return it once open.

    Raises HandshakeError (with `.status` when the server answered with HTTP), OSError or
    TimeoutError.
    """
    parts = urlsplit(url)
    if parts.scheme != "ws" or parts.hostname is None:
        raise ValueError(f"only ws:// URLs are supported: {url}")
    hostname = parts.hostname
    port = parts.port or 80
    host_header = parts.netloc
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    loop = asyncio.get_running_loop()

    async def opening() -> Any:
        _, proto = await loop.create_connection(factory, hostname, port)
        proto.send_request(host_header, path, headers or {})
        try:
            await proto.opened
        except BaseException:
            proto.abort()
            raise
        return proto

    return await asyncio.wait_for(opening(), open_timeout)


class WsServer(WsProtocol):
    """Server side: override `accept_request(path, headers)` to refuse upgrades with an HTTP error."""

    is_client = False

    def __init__(self) -> None:
        super().__init__()
        self.path = ""
        self.request_headers: dict[str, str] = {}

    def accept_request(self, path: str, headers: dict[str, str]) -> tuple[int, str, str] | None:
        """None to accept, or (status, reason phrase, body) to answer with instead of a 101."""
        return None

    def _handshake(self, head: bytes) -> None:
        start, headers = parse_http_head(head)
        parts = start.split(" ")
        if len(parts) != 3 or parts[0] != "GET" or parts[2] != "HTTP/1.1":
            raise HandshakeError(f"unsupported request line {start!r}", 400)
        self.path = parts[1]
        self.request_headers = headers
        if not _has_token(headers.get("upgrade"), "websocket"):
            raise HandshakeError("missing Upgrade: websocket", 426)
        if not _has_token(headers.get("connection"), "upgrade"):
            raise HandshakeError("missing Connection: Upgrade", 400)
        if headers.get("sec-websocket-version") != "13":
            raise HandshakeError("unsupported Sec-WebSocket-Version", 426)
        key = headers.get("sec-websocket-key", "")
        try:
            if len(base64.b64decode(key, validate=True)) != 16:
                raise ValueError
        except ValueError:
            raise HandshakeError("invalid Sec-WebSocket-Key", 400) from None
        refused = self.accept_request(self.path, headers)
        if refused is not None:
            status, phrase, body = refused
            raise HandshakeError(f"{status} {phrase}: {body}", status)
        assert self.transport is not None
        self.transport.write(
            (
                "HTTP/1.1 101 Switching Protocols\r\n"
                "Upgrade: websocket\r\n"
                "Connection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n"
            ).encode("latin-1")
        )

    def _handshake_failed(self, exc: HandshakeError) -> None:
        status = exc.status or 400
        body = (str(exc) + "\n").encode("utf-8")
        phrase = {400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 426: "Upgrade Required"}.get(
            status, "Error"
        )
        if self.transport is not None:
            self.transport.write(
                f"HTTP/1.1 {status} {phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
                + body
            )
            self.transport.close()
        self.state = CLOSED
