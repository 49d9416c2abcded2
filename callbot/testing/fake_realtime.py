"""A protocol-faithful fake of the OpenAI Realtime GA WebSocket API.

Tests, the offline demo and the load benchmark point the real SDK at it:

    async with FakeRealtimeServer(Script(replies=["Sure."])) as server:
        client = AsyncOpenAI(api_key="fake", base_url=server.base_url)
        async with client.realtime.connect(model="gpt-realtime-1.5") as conn:
            ...
        assert server.violations == []

What it does, in GA shapes checked against the SDK's pydantic models (`protocol_check`):
session.created / session.update; input audio (audio/pcm 24 kHz and audio/pcmu) with an energy
server-VAD, commit/clear, scripted input transcription; responses with paced audio +
transcript deltas (or text), barge-in and `response.cancel`, out-of-band responses; item
create/delete/truncate/retrieve with the real error cases; token usage that follows the items
kept server-side; scripted function calls (`Script.function_calls`: speech, then a
`function_call` item) and the read-back of a `function_call_output` (`Script.after_tool`);
remote MCP tools as OpenAI runs them (`fake_realtime_mcp`): a declared server's tools listed
from `Script.mcp_tools`, and `Script.mcp_calls` (an `mcp_call` item with the scripted output or
error, then speech about it, in one response). It connects to no MCP server and does not do
images, `audio/pcma`, `idle_timeout_ms`, noise reduction or truncation of an overflowing context.

Fault injection for resilience tests: `drop_after_events(n)`, `drop_now()`,
`refuse_connections`, `expire_session()`.

Run standalone (e.g. for the load benchmark): `python -m callbot.testing.fake_realtime --port 8765`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from http import HTTPStatus
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from callbot.testing.fake_realtime_session import FakeSession
from callbot.testing.fake_realtime_state import Script, SessionContext

__all__ = ["FakeRealtimeServer", "FakeSession", "Script", "main", "serve_forever"]


class FakeRealtimeServer:
    """Fake OpenAI Realtime GA server on a local port.

    `validate=False` skips strict validation of the high-volume events (`input_audio_buffer.append`
    and the `response.*.delta`s); everything else is always validated. `record_audio=False`
    keeps those events out of `FakeSession.received` / `.sent` and drops caller audio after
    measuring it, so hundreds of long sessions stay small (the load benchmark wants both off).
    """

    def __init__(
        self,
        script: Script | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        validate: bool = True,
        record_audio: bool = True,
    ) -> None:
        self.script = script or Script()
        self.host = host
        self._requested_port = port
        self._ctx = SessionContext(self.script, validate=validate, record_audio=record_audio)
        self.sessions: list[FakeSession] = []
        self.refuse_connections = False
        """While True, WebSocket upgrades are answered with HTTP 503."""
        self._drop_next: int | None = None
        self._server: Server | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def violations(self) -> list[str]:
        """Every protocol violation seen, in either direction, by any session."""
        return self._ctx.violations

    @property
    def context(self) -> SessionContext:
        """What every session shares: the script, the validation switches, the synth cache."""
        return self._ctx

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeRealtimeServer is not started")
        port: int = next(iter(self._server.sockets)).getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        """Pass as `AsyncOpenAI(base_url=...)`; the SDK connects to `ws://.../v1/realtime?model=...`."""
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self._requested_port,
            process_request=self._process_request,
            compression=None,
            max_size=16 * 2**20,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> FakeRealtimeServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def open_sessions(self) -> list[FakeSession]:
        return [s for s in self.sessions if not s.closed]

    # ------------------------------------------------------------------ fault injection

    def drop_after_events(self, n: int) -> None:
        """Close each open session with code 1011 after it has sent `n` more server events.

        With no session open, the next session to connect is armed instead (counting from its
        `session.created`).
        """
        sessions = self.open_sessions
        for session in sessions:
            session.drop_after = n
        self._drop_next = None if sessions else n

    async def drop_now(self, code: int = 1011) -> None:
        """Close every open session right away (default code 1011), discarding queued events."""
        await asyncio.gather(*(s.abort(code) for s in self.open_sessions))

    def expire_session(self, minutes: int = 60, code: int = 1001) -> None:
        """Send the real `session_expired` error to every open session, then close it."""
        for session in self.open_sessions:
            session.expire(minutes, code)

    # ------------------------------------------------------------------ connections

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if not path.rstrip("/").endswith("/realtime"):
            return _refuse(
                connection, HTTPStatus.NOT_FOUND, f"Invalid URL (GET {path}): the fake serves .../realtime"
            )
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return _refuse(connection, HTTPStatus.UNAUTHORIZED, "Missing bearer authentication in header")
        if self.refuse_connections:
            return _refuse(
                connection, HTTPStatus.SERVICE_UNAVAILABLE, "Fake server refusing connections", "server_error"
            )
        return None

    def create_session(self, ws: ServerConnection, model: str, *, drop_after: int | None) -> FakeSession:
        """The session for a connection just accepted (a hook: the load bench adds timestamps)."""
        return FakeSession(self._ctx, ws, model, drop_after=drop_after)

    def session_closed(self, session: FakeSession) -> None:
        """Called once a session's connection is gone (a hook; `sessions` keeps it by default)."""

    async def _handle(self, ws: ServerConnection) -> None:
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        model = (query.get("model") or ["gpt-realtime"])[0]
        session = self.create_session(ws, model, drop_after=self._drop_next)
        self._drop_next = None
        self.sessions.append(session)
        try:
            await session.run()
        finally:
            self.session_closed(session)


def _refuse(
    connection: ServerConnection, status: HTTPStatus, message: str, kind: str = "invalid_request_error"
) -> Response:
    """A refused upgrade, with the JSON error body OpenAI's API answers with."""
    response = connection.respond(status, "")
    response.body = orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})
    del response.headers["Content-Length"], response.headers["Content-Type"]  # (setting appends)
    response.headers["Content-Length"] = str(len(response.body))
    response.headers["Content-Type"] = "application/json"
    return response


async def serve_forever(
    host: str = "127.0.0.1", port: int = 8765, script: Script | None = None, **kwargs: Any
) -> None:
    """Run a FakeRealtimeServer until cancelled; prints its base URL once listening."""
    async with FakeRealtimeServer(script, host=host, port=port, **kwargs) as server:
        print(f"fake OpenAI Realtime listening: base_url={server.base_url}", flush=True)
        await asyncio.Future()


def main(argv: list[str] | None = None) -> None:
    """CLI: `python -m callbot.testing.fake_realtime --port 8765 [--realtime-factor 4] [--fast]`."""
    parser = argparse.ArgumentParser(description="Fake OpenAI Realtime GA server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--realtime-factor", type=float, default=Script.realtime_factor)
    parser.add_argument("--delta-ms", type=int, default=Script.delta_ms)
    parser.add_argument("--first-delta-delay-ms", type=float, default=0.0)
    parser.add_argument("--transcript-after-response", action="store_true")
    parser.add_argument("--reply", action="append", default=[], help="scripted reply (repeatable)")
    parser.add_argument("--greeting", default=None)
    parser.add_argument(
        "--fast",
        action="store_true",
        help="benchmark mode: no validation/recording of audio and delta events",
    )
    args = parser.parse_args(argv)
    script = Script(
        replies=args.reply,
        transcript_after_response=args.transcript_after_response,
        realtime_factor=args.realtime_factor,
        delta_ms=args.delta_ms,
        first_delta_delay_ms=args.first_delta_delay_ms,
    )
    if args.greeting is not None:
        script.greeting = args.greeting
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            serve_forever(args.host, args.port, script, validate=not args.fast, record_audio=not args.fast)
        )


if __name__ == "__main__":
    main()
