"""In-memory websockets of callbot's uvicorn protocol, and masked client frames, for channel tests.

`in_memory_websocket` runs a real `ChannelWebSocketProtocol` over a memory transport, as the
module's own probe does: the test plays the client with `protocol.data_received` and reads what
the server wrote from `transport.writes`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from starlette.websockets import WebSocket
from uvicorn.config import Config
from uvicorn.server import ServerState
from websockets.frames import Frame, Opcode

from callbot.adapters.ws_channel import PROBE_HANDSHAKE, ChannelWebSocketProtocol, ProbeTransport


def masked_frame(text: str, opcode: Opcode = Opcode.TEXT, fin: bool = True) -> bytes:
    """One client frame as a websocket client sends it (masked)."""
    return Frame(opcode, text.encode(), fin=fin).serialize(mask=True, extensions=[])


class MemoryTransport(ProbeTransport):
    """The probe's in-memory transport, keeping each write apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))


@contextlib.asynccontextmanager
async def in_memory_websocket() -> AsyncIterator[tuple[WebSocket, ChannelWebSocketProtocol, MemoryTransport]]:
    """An accepted websocket of a real `ChannelWebSocketProtocol` over a memory transport; the
    test plays the client with `protocol.data_received` and reads `transport.writes`."""
    accepted: asyncio.Future[WebSocket] = asyncio.get_running_loop().create_future()
    finished = asyncio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        ws = WebSocket(scope, receive, send)
        await ws.accept()
        accepted.set_result(ws)
        await finished.wait()

    config = Config(app, ws=ChannelWebSocketProtocol, log_config=None, lifespan="off")
    config.load()
    state = ServerState()
    protocol = ChannelWebSocketProtocol(config=config, server_state=state, app_state={})
    transport = MemoryTransport()
    protocol.connection_made(transport)
    protocol.data_received(PROBE_HANDSHAKE)
    ws = await asyncio.wait_for(accepted, 5)
    transport.writes.clear()  # the 101 response
    try:
        yield ws, protocol, transport
    finally:
        finished.set()
        if protocol in state.connections:
            protocol.connection_lost(None)
        await asyncio.wait(state.tasks, timeout=1)
