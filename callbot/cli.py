"""The `callbot` command line: serve, demo, phone, tickets, db."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from callbot.logs import setup_logging
    from callbot.settings import Settings, SettingsError
    from callbot.web.app import create_app, server_options

    try:
        settings = Settings()
        settings.check_serving()
    except (SettingsError, ValueError) as exc:
        print(f"callbot: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, json_lines=settings.log_json)
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, timeout_graceful_shutdown=5, **server_options(settings)
    )
    DrainingServer(config, settings.drain_timeout_s).run()
    return 0


def DrainingServer(config: Any, drain_timeout_s: float) -> Any:
    """A uvicorn server whose first SIGTERM/SIGINT drains calls before shutting down.

    Plain uvicorn closes every websocket at once on SIGTERM, hanging up on callers. Here the
    first signal makes readiness fail and the webhook refuse new calls politely, lets active
    calls finish for up to `drain_timeout_s`, ends the rest (Twilio speaks the end message),
    and only then lets uvicorn stop; tickets are written as each call ends. A second signal
    stops at once.
    """
    import asyncio
    import gc

    import uvicorn

    class _Server(uvicorn.Server):
        draining = False

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            # Everything alive now (imports, app, clients) lives as long as the process: keep it
            # out of the collector, whose full passes otherwise stall every call at once.
            gc.freeze()

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.draining or self.should_exit:
                super().handle_exit(sig, frame)
                return
            self.draining = True
            loop = asyncio.get_event_loop()
            loop.call_soon_threadsafe(lambda: loop.create_task(self._drain_then_exit()))

        async def _drain_then_exit(self) -> None:
            app: Any = self.config.app
            services = getattr(app.state, "services", None)
            if services is not None:
                await services.drain(drain_timeout_s)
            self.should_exit = True

    return _Server(config)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callbot",
        description="Answer phone calls with an OpenAI Realtime agent over Twilio Media Streams.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = sub.add_parser("serve", help="run the server (Twilio webhook + media websocket)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.set_defaults(func=_cmd_serve)

    from callbot import cli_tickets, demo, phone

    demo.add_parser(sub)
    phone.add_parser(sub)
    cli_tickets.register(sub)
    from callbot.sim import fake_openai

    fake = sub.add_parser(
        "fake-openai",
        aliases=["fake-realtime"],
        help="run the offline OpenAI: Realtime websocket and the text models (local tests)",
        description="The offline OpenAI on one port: the Realtime websocket callbot talks to during a "
        "call and the chat completions its summaries and tickets use. Scripted, not a model.",
    )
    fake_openai.add_arguments(fake)
    fake.set_defaults(func=fake_openai.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
