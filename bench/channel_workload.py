"""A fixed, deterministic workload of the Twilio socket's adapters, for instruction counts.

    python bench/channel_workload.py --frames 5000
    valgrind --tool=callgrind --toggle-collect=functools_reduce python bench/channel_workload.py

`bench/hotpath_workload.py` counts the core alone; this counts what runs around it for each
Twilio media frame on the server: uvicorn's websocket protocol as callbot extends it
(`ChannelWebSocketProtocol`: the frame split and unmasked off the socket's bytes), the
`TextChannel` handing the text to the waiting task, `TwilioSocket.recv` and `twilio.parse`,
as the bridge's Twilio pump calls them. No socket: the protocol runs over an in-memory
transport (the one its probe uses), one masked frame of Twilio's media JSON per
`data_received` and an event-loop turn after each, as one frame per TCP read arrives under
load. The counted part runs inside `functools.reduce`, so callgrind's `--toggle-collect`
counts only it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import os
import sys
import time
from typing import Any

import orjson
from websockets.frames import apply_mask

from callbot.adapters import ws_channel
from callbot.adapters.twilio_ws import TwilioSocket
from callbot.core import twilio as tw

STREAM = "MZ" + "0" * 32


def _frame(text: bytes, key: bytes) -> bytes:
    n = len(text)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    return head + key + apply_mask(text, key)


def _media_frames(count: int) -> list[bytes]:
    payload = base64.b64encode(bytes([0xFF]) * 160).decode()
    frames = []
    for seq in range(count):
        text = orjson.dumps(
            {
                "event": "media",
                "sequenceNumber": str(seq + 2),
                "media": {
                    "track": "inbound",
                    "chunk": str(seq + 1),
                    "timestamp": str(20 * seq),
                    "payload": payload,
                },
                "streamSid": STREAM,
            }
        )
        frames.append(_frame(text, os.urandom(4)))
    return frames


class _Scope:
    """What TwilioSocket reads of Starlette's WebSocket on the channel path: its scope."""

    def __init__(self, scope: dict[str, Any]) -> None:
        self.scope = scope


def _serve(frames: list[bytes]) -> int:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    try:
        import uvloop
    except ImportError:  # what callbot serves with when it is installed; asyncio's loop otherwise
        loop = asyncio.new_event_loop()
    else:
        loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    parsed = 0
    sockets: list[TwilioSocket] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal parsed
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        sock = TwilioSocket(_Scope(scope), 1 << 16)  # type: ignore[arg-type]
        sock.accepted()
        sockets.append(sock)
        while (text := await sock.recv()) is not None:
            if type(tw.parse(text)) is tw.Media:
                parsed += 1

    config = Config(
        app, ws=ws_channel.ChannelWebSocketProtocol, ws_max_size=1 << 16, log_config=None, lifespan="off"
    )
    config.load()
    state = ServerState()
    protocol = ws_channel.ChannelWebSocketProtocol(config=config, server_state=state, app_state={})
    # public since the channel tests share them; an older checkout (PYTHONPATH=...) has them private
    probe_transport = getattr(ws_channel, "ProbeTransport", None) or ws_channel._ProbeTransport  # type: ignore[attr-defined]
    handshake = getattr(ws_channel, "PROBE_HANDSHAKE", None) or ws_channel._PROBE_HANDSHAKE  # type: ignore[attr-defined]
    transport = probe_transport()

    async def connect() -> None:
        protocol.connection_made(transport)
        protocol.data_received(handshake)
        for _ in range(50):
            if sockets:
                return
            await asyncio.sleep(0)

    async def feed() -> None:
        # Each frame in a callback of its own, as each TCP read is: the pump's task wakes up
        # (its callback was queued by the frame's delivery) before the next frame is fed.
        done = loop.create_future()
        it = iter(frames)

        def next_frame() -> None:
            frame = next(it, None)
            if frame is None:
                done.set_result(None)
                return
            protocol.data_received(frame)
            loop.call_soon(next_frame)

        loop.call_soon(next_frame)
        await done

    loop.run_until_complete(connect())
    if not sockets or not sockets[0].direct:
        raise SystemExit("the text channel did not open: the fast path is off on these versions")
    functools.reduce(lambda a, b: loop.run_until_complete(feed()) or 0, [0, 0])  # counted by callgrind
    protocol.connection_lost(None)
    loop.run_until_complete(asyncio.wait(state.tasks, timeout=1))
    loop.close()
    return parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=5000, help="Twilio media frames to feed")
    args = parser.parse_args(argv)
    frames = _media_frames(args.frames)
    t0 = time.process_time()
    parsed = _serve(frames)
    cpu_ms = (time.process_time() - t0) * 1000
    print(f"{parsed} of {args.frames} media frames parsed, {cpu_ms:.1f} ms CPU", file=sys.stderr)
    return 0 if parsed == args.frames else 1


if __name__ == "__main__":
    raise SystemExit(main())
