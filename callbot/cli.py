"""The `callbot` command line: serve, demo, phone, call, tickets, db."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from callbot.adapters.fastpaths import probe_fast_paths
    from callbot.adapters.uvicorn_server import build_server
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
    # Everything alive after start-up lives as long as the process: freezing it keeps it out of
    # the collector's full passes, which otherwise stall every call at once.
    app = create_app(settings, freeze_gc_after_startup=True)
    config = uvicorn.Config(
        app, host=args.host, port=args.port, timeout_graceful_shutdown=5, **server_options(settings)
    )

    async def drain() -> None:
        await app.state.services.drain(settings.drain_timeout_s)

    draining = probe_fast_paths(settings.fast_paths).sigterm_drain.active
    build_server(config, drain, draining=draining).run()
    return 0


def build_parser(*, serve_only: bool = False) -> argparse.ArgumentParser:
    """The whole command line; `serve_only` leaves out the other commands, whose modules import
    the simulator, the softphone, alembic and the ticket CLI: none of it belongs in a server."""
    parser = argparse.ArgumentParser(
        prog="callbot",
        description="Answer phone calls with an OpenAI Realtime agent over Twilio Media Streams.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve = sub.add_parser("serve", help="run the server (Twilio webhook + media websocket)")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    serve.set_defaults(func=_cmd_serve)
    if serve_only:
        return parser

    from callbot import cli_calls, cli_tickets, demo, phone

    demo.add_parser(sub)
    phone.add_parser(sub)
    cli_calls.add_parser(sub)
    cli_tickets.register(sub)
    from callbot.testing import fake_openai

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
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(serve_only=argv[:1] == ["serve"])
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
