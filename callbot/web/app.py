"""The FastAPI application: Twilio's voice webhook, the media websocket, health and review routes.

`create_app(settings)` is the composition root and only composes: the routes live in
`twilio_routes`, `ops` and `review`; the services they share (OpenAI client, Realtime connector,
pacer, ticket service) are built by `services.open_services` in the lifespan, never at import
time. Tests pass their own connector/observer to run the real app against the fake Realtime
server.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from callbot.adapters.fastpaths import probe_fast_paths
from callbot.adapters.ws_channel import ChannelWebSocketProtocol
from callbot.errors import StoreUnavailable
from callbot.ports import CallObserver, RealtimeConnector, Summariser, TicketReader
from callbot.settings import Settings
from callbot.web import ops, twilio_routes
from callbot.web.calls import calls_router
from callbot.web.review import review_router
from callbot.web.services import Services, open_services

__all__ = ["Services", "create_app", "server_options"]


def create_app(
    settings: Settings,
    *,
    connector: RealtimeConnector | None = None,
    observer: CallObserver | None = None,
    summariser: Summariser | None = None,
    extra_setup: Callable[[FastAPI], Any] | None = None,
    freeze_gc_after_startup: bool = False,
) -> FastAPI:
    """Build the app. What is not injected (tests inject fakes) is built in the lifespan.

    `freeze_gc_after_startup` (`callbot serve`): once started, `gc.freeze()` what is alive."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(
            settings, connector=connector, observer=observer, summariser=summariser
        ) as services:
            app.state.services = services
            if freeze_gc_after_startup:
                gc.freeze()
            yield

    app = FastAPI(title="callbot", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.include_router(ops.router)
    app.include_router(twilio_routes.router)

    def current_store() -> TicketReader:
        store: TicketReader | None = app.state.services.store
        if store is None:
            raise StoreUnavailable("this server has no ticket store")
        return store

    password = settings.admin_password.get_secret_value() if settings.admin_password else None
    trigger = settings.summary_trigger_tokens if settings.summary_enabled else None
    app.include_router(
        review_router(
            current_store,
            settings.admin_user,
            password,
            prices=settings.price_table,
            summary_trigger_tokens=trigger,
        )
    )
    app.include_router(calls_router(settings))
    if extra_setup is not None:
        extra_setup(app)
    return app


def server_options(settings: Settings) -> dict[str, Any]:
    """How callbot is served by uvicorn (`callbot serve`, the load benchmark): the media stream's
    websocket protocol with its direct text channel where its probe passed (else uvicorn's own),
    and the message size bound."""
    options: dict[str, Any] = {
        "ws_max_size": settings.max_message_bytes,
        "proxy_headers": True,
        "log_config": None,
    }
    if probe_fast_paths(settings.fast_paths).twilio_channel.active:
        options["ws"] = ChannelWebSocketProtocol
    return options
