"""Serve an ASGI app on loopback inside the current event loop (tests, demo, benchmark)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from callbot.adapters.fastpaths import probe_fast_paths
from callbot.adapters.ws_channel import ChannelWebSocketProtocol


@contextlib.asynccontextmanager
async def serve_app(
    app: Any, *, host: str = "127.0.0.1", port: int = 0, **options: Any
) -> AsyncIterator[str]:
    """Run `app` with uvicorn until the block exits; yields its base URL (http://host:port).

    Websockets are served as `callbot serve` serves them: with the direct text channel where its
    probe passed, else with uvicorn's own protocol (`ws="auto"`)."""
    if "ws" not in options:
        options["ws"] = ChannelWebSocketProtocol if probe_fast_paths().twilio_channel.active else "auto"
    config = uvicorn.Config(app, host=host, port=port, log_config=None, lifespan="on", **options)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name="uvicorn")
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("uvicorn exited before it started")
            await asyncio.sleep(0.01)
        sockets = [s for srv in server.servers for s in srv.sockets]
        bound_port = sockets[0].getsockname()[1]
        yield f"http://{host}:{bound_port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=10)
