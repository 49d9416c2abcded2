"""The whole offline OpenAI on one port: the Realtime websocket and the HTTP text API.

`OPENAI_BASE_URL` names one origin, and the SDK derives the Realtime URL from it
(`ws://HOST:PORT/v1/realtime`), so a local callbot needs both behind the same port: the fake
Realtime server (`fake_realtime`, a `websockets` server, which cannot answer a plain HTTP POST)
and the fake chat-completions app (`fake_openai_http`, ASGI under uvicorn). Each runs on a
private loopback port, unchanged; a small front door on the public port reads the head of each
connection and hands the whole connection, bytes untouched, to the websocket server when the
request asks for `Upgrade: websocket` and to the HTTP app otherwise. Anything the fake does not
serve thus gets an HTTP answer with an OpenAI-shaped JSON error, never a dropped connection.

    async with FakeOpenAI(Script(replies=["Sure."])) as fake:
        client = AsyncOpenAI(api_key="fake", base_url=fake.base_url)   # realtime + chat
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import signal
import sys
from types import TracebackType

import numpy as np
import orjson

from callbot.caller.wavio import write_wav
from callbot.testing.fake_openai_http import FakeOpenAIControl, create_fake_openai_app, serve_app
from callbot.testing.fake_realtime import FakeRealtimeServer, Script
from callbot.testing.speech import duration_ms_for_text, silence, synth_speech
from callbot.testing.tts import CALLER_VOICE, speak

HEAD_LIMIT = 64 * 1024
"""Largest request head the front door reads before it decides where a connection goes."""
HEAD_TIMEOUT_S = 30.0
_UPGRADE = re.compile(rb"^upgrade:[ \t]*websocket[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)


class FakeOpenAI:
    """Fake Realtime (websocket) and chat completions (HTTP) on `host:port` (0 picks a free port).

    `realtime` is the FakeRealtimeServer (its sessions, violations, fault injection) and
    `control` the FakeOpenAIControl of the HTTP side (its requests, failure switches).
    """

    def __init__(
        self,
        script: Script | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        control: FakeOpenAIControl | None = None,
    ) -> None:
        self.realtime = FakeRealtimeServer(script)
        self.control = control or FakeOpenAIControl()
        self.host = host
        self._requested_port = port
        self._stack = contextlib.AsyncExitStack()
        self._http_port = 0
        self._front: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._front is None:
            raise RuntimeError("FakeOpenAI is not started")
        port: int = self._front.sockets[0].getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        """What `OPENAI_BASE_URL` (or `AsyncOpenAI(base_url=...)`) should be."""
        return f"http://{self.host}:{self.port}/v1"

    async def start(self) -> None:
        try:
            await self._stack.enter_async_context(self.realtime)
            http_url = await self._stack.enter_async_context(serve_app(create_fake_openai_app(self.control)))
            self._http_port = int(http_url.rsplit(":", 1)[1])
            self._front = await asyncio.start_server(
                self._accept, self.host, self._requested_port, limit=HEAD_LIMIT
            )
        except BaseException:
            await self._stack.aclose()
            raise

    async def stop(self) -> None:
        if self._front is not None:
            self._front.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._stack.aclose()

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # ------------------------------------------------------------------ the front door

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.create_task(self._route(reader, writer))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _route(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT_S)
            except asyncio.LimitOverrunError:
                await _answer(writer, 431, "Request header fields too large for the fake OpenAI.")
                return
            except (asyncio.IncompleteReadError, TimeoutError):
                return  # the client sent no complete request: there is nobody to answer
            port = self.realtime.port if _UPGRADE.search(head) else self._http_port
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                up_writer.write(head)
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        except ConnectionError:
            pass  # either side went away; the other is closed below
        finally:
            writer.close()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    """Copy until `src` ends, then half-close `dst` so the other side sees the end too."""
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except ConnectionError:
        pass
    finally:
        if dst.can_write_eof() and not dst.is_closing():
            with contextlib.suppress(OSError):
                dst.write_eof()


async def _answer(writer: asyncio.StreamWriter, status: int, message: str) -> None:
    body = orjson.dumps(
        {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    )
    writer.write(
        f"HTTP/1.1 {status} Error\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()


# ---------------------------------------------------------------------- the command line


def caller_wav(path: str, lines: list[str], *, rate: int = 8000) -> None:
    """A caller recording for `callbot phone --input`: one utterance per scripted line.

    The lines are spoken in words through eSpeak NG where the `speech` extra is installed
    (callbot/testing/tts.py; its pauses inside a line stay under 400 ms), else as buzzes as long
    as the lines would take to say; 1.2 s apart, so the phone's 700 ms silence cut and the
    fake's VAD both find one turn per line.
    """
    pieces = [silence(300, rate)]
    for n, line in enumerate(lines):
        spoken = speak(line, rate, voice=CALLER_VOICE)
        if spoken is None:
            spoken = synth_speech(min(duration_ms_for_text(line), 2500), rate, seed=200 + n)
        pieces += [spoken, silence(1200, rate)]
    write_wav(path, [np.concatenate(pieces)], rate)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8765, help="port to listen on (default 8765; 0 picks one)"
    )
    parser.add_argument("--greeting", default=None, help="what the assistant says first")
    parser.add_argument(
        "--caller-line",
        action="append",
        default=[],
        metavar="TEXT",
        help="the transcript of the caller's next utterance (repeatable; default: three booking lines)",
    )
    parser.add_argument(
        "--reply",
        action="append",
        default=[],
        metavar="TEXT",
        help="the assistant's next reply (repeatable; beyond them: 'You said: <caller line>')",
    )
    parser.add_argument(
        "--realtime-factor",
        type=float,
        default=Script.realtime_factor,
        help=f"how much faster than real time reply audio streams (default {Script.realtime_factor:g})",
    )
    parser.add_argument(
        "--write-caller-wav",
        metavar="PATH",
        help="write a caller recording matching the caller lines (for callbot phone --input) and exit",
    )


def script_from(args: argparse.Namespace) -> Script:
    script = Script(replies=list(args.reply), realtime_factor=args.realtime_factor, speak_words=True)
    if args.caller_line:
        script.user_transcripts = list(args.caller_line)
    if args.greeting is not None:
        script.greeting = args.greeting
    return script


def run(args: argparse.Namespace) -> int:
    """`callbot fake-openai`: serve until Ctrl-C / SIGTERM (exit 0); exit 2 if the port is taken."""
    script = script_from(args)
    if args.write_caller_wav:
        caller_wav(args.write_caller_wav, script.user_transcripts)
        print(f"wrote {args.write_caller_wav}: {len(script.user_transcripts)} caller utterances, 8 kHz mono")
        return 0
    try:
        return asyncio.run(_serve(script, args.host, args.port))
    except KeyboardInterrupt:
        return 0


async def _serve(script: Script, host: str, port: int) -> int:
    fake = FakeOpenAI(script, host=host, port=port)
    try:
        await fake.start()
    except OSError as exc:
        print(f"callbot: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(
        f"fake OpenAI listening: base_url={fake.base_url} (Realtime websocket and chat completions)\n"
        f"Point callbot at it: export OPENAI_BASE_URL={fake.base_url} OPENAI_API_KEY=fake",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await fake.stop()
        if fake.realtime.violations:
            print("protocol violations seen:", *fake.realtime.violations, sep="\n  ", file=sys.stderr)
    return 0
