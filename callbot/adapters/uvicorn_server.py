"""`callbot serve`'s uvicorn server: the first SIGTERM or SIGINT drains calls before shutting down.

Plain uvicorn closes every websocket at once on SIGTERM, hanging up on callers. Here the first
signal makes readiness fail and the webhook refuse new calls politely, lets active calls finish
for up to the drain timeout, ends the rest (Twilio speaks the end message), and only then lets
uvicorn stop; tickets are written as each call ends. A second signal stops at once.

uvicorn has no public hook for this, so the server overrides `Server.handle_exit`, the method
uvicorn's signal handlers call (the `sigterm_drain` fast path, guarded by `probe()`). When the
probe fails, callbot runs a plain `uvicorn.Server` and logs why.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

FALLBACK = "plain uvicorn.Server (SIGTERM closes every call at once, without draining)"

TOUCHES = {"uvicorn.Server": ("handle_exit(sig, frame)", "should_exit")}
"""Every name of uvicorn's internals this module touches (the contract test checks them)."""


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self._drain = drain
        self.draining = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.draining or self.should_exit:
            super().handle_exit(sig, frame)
            return
        self.draining = True
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(lambda: loop.create_task(self._drain_then_exit()))

    async def _drain_then_exit(self) -> None:
        await self._drain()
        self.should_exit = True


def build_server(
    config: uvicorn.Config, drain: Callable[[], Awaitable[None]], *, draining: bool = True
) -> uvicorn.Server:
    """The draining server where its probe passed (`draining`), else uvicorn's own."""
    return DrainingServer(config, drain) if draining else uvicorn.Server(config)


def probe() -> str:
    """'' when uvicorn still calls `handle_exit(sig, frame)` and reads `should_exit`, else what changed."""
    handle_exit = getattr(uvicorn.Server, "handle_exit", None)
    if not callable(handle_exit):
        return "uvicorn.Server has no handle_exit"
    params = list(inspect.signature(handle_exit).parameters)
    if params[:3] != ["self", "sig", "frame"]:
        return f"uvicorn.Server.handle_exit takes ({', '.join(params)}), not (self, sig, frame)"
    server = uvicorn.Server(uvicorn.Config(_no_app, log_config=None))
    if getattr(server, "should_exit", None) is not False:
        return "uvicorn.Server has no should_exit flag"
    return ""


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    pass
