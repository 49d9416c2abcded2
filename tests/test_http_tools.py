"""The HTTP tool runner against a real loopback server: what reaches the tool, what comes back,
and how each failure reads for the model (adapters/http_tools.py)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from callbot.adapters.http_tools import MAX_OUTPUT_CHARS, HttpToolRunner
from callbot.core.tool_config import HttpTool
from callbot.errors import ToolFailed
from callbot.testing.serving import serve_app

seen: list[dict[str, Any]] = []


async def echo(request: Request) -> JSONResponse:
    seen.append(
        {"method": request.method, "query": dict(request.query_params), "headers": dict(request.headers)}
    )
    if request.query_params.get("big"):
        return JSONResponse({"text": "x" * (MAX_OUTPUT_CHARS * 2)})
    return JSONResponse({"ok": True, "query": dict(request.query_params)})


def tool(url: str, **kwargs: Any) -> HttpTool:
    return HttpTool(name="t", description="d", parameters={"type": "object"}, url=url, **kwargs)


async def test_get_sends_the_arguments_as_query_parameters_with_the_headers() -> None:
    seen.clear()
    async with serve_app(Starlette(routes=[Route("/x", echo, methods=["GET"])])) as url:
        runner = HttpToolRunner()
        try:
            out = await runner.run(
                tool(url + "/x", method="GET", headers=(("X-Key", "k1"),)), '{"n": "4417", "deep": {"a": 1}}'
            )
            big = await runner.run(tool(url + "/x", method="GET"), '{"big": "1"}')
        finally:
            await runner.aclose()
    assert out == '{"ok":true,"query":{"n":"4417","deep":"{\\"a\\": 1}"}}'
    assert seen[0]["headers"]["x-key"] == "k1"
    assert len(big) == MAX_OUTPUT_CHARS


async def test_bad_arguments_and_an_unreachable_tool_are_errors_the_model_can_explain() -> None:
    runner = HttpToolRunner()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once closed
    try:
        with pytest.raises(ToolFailed, match="not valid JSON"):
            await runner.run(tool("http://127.0.0.1:9/x"), "{oops")
        with pytest.raises(ToolFailed, match="must be a JSON object"):
            await runner.run(tool("http://127.0.0.1:9/x"), "[1]")
        with pytest.raises(ToolFailed, match="t could not be reached") as gone:
            await runner.run(tool(f"http://127.0.0.1:{port}/x", timeout_s=2), "{}")
    finally:
        await runner.aclose()
    assert not gone.value.timed_out


async def _raw_answer(body: bytes, content_type: str = "application/json", status: int = 200) -> Any:
    """A server that answers every request with these bytes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            ),
            0,
        )
        await reader.readexactly(length)
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\nContent-Type: {content_type}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


@pytest.mark.parametrize(
    ("arguments", "method", "message"),
    [
        ('{"order_number": "\\ud800"}', "POST", "not valid Unicode"),
        ('{"order_number": "\\ud800"}', "GET", "not valid Unicode"),
        ('{"n": 1e999}', "POST", "a number JSON cannot carry"),
        ("[" * 100_000 + "]" * 100_000, "POST", "not valid JSON"),
        ('{"n": ' + "9" * 5000 + "}", "POST", "not valid JSON"),
        ('{"order_number": "' + "4" * 70_000 + '"}', "GET", "do not fit in its URL"),
    ],
)
async def test_arguments_no_request_could_carry_are_a_clear_error(
    arguments: str, method: str, message: str
) -> None:
    """Found by the tool fuzzer: each of these raised out of the runner (UnicodeEncodeError,
    ValueError, RecursionError, httpx.InvalidURL), so the bridge logged an ERROR and the model
    never got an output for its call."""
    server = await _raw_answer(b'{"ok": true}')
    port = server.sockets[0].getsockname()[1]
    runner = HttpToolRunner()
    try:
        with pytest.raises(ToolFailed, match=message):
            await runner.run(tool(f"http://127.0.0.1:{port}/x", method=method), arguments)
    finally:
        await runner.aclose()
        server.close()


@pytest.mark.parametrize(
    ("body", "content_type", "status", "expected"),
    [
        (b'{"k": "\\ud800 and \\u0000"}', "application/json", 200, '{"k":"\\ud800 and \\u0000"}'),
        (b'{"k": "caf\xc3\xa9"}', "application/json", 200, '{"k":"caf\u00e9"}'),
        (
            b"[" * 100_000 + b"]" * 100_000,
            "application/json",
            200,
            "ToolFailed: t answered something that is not JSON",
        ),
        (
            b'{"n": ' + b"9" * 5000 + b"}",
            "application/json",
            200,
            "ToolFailed: t answered something that is not JSON",
        ),
        (
            b"oops \x00\xff",
            "text/plain; charset=klingon",
            503,
            "ToolFailed: t answered HTTP 503: oops \ufffd\ufffd",
        ),
    ],
)
async def test_answers_python_or_postgresql_cannot_take_as_they_are_are_escaped_or_a_clear_error(
    body: bytes, content_type: str, status: int, expected: str
) -> None:
    """Found by the tool fuzzer: a lone surrogate in the answer reached the model's websocket
    (which has no UTF-8 for it), a NUL the ticket (PostgreSQL keeps none), deep nesting and long
    numbers raised out of the runner, and an unknown charset broke the error message."""
    server = await _raw_answer(body, content_type, status)
    port = server.sockets[0].getsockname()[1]
    runner = HttpToolRunner()
    try:
        try:
            out = await runner.run(tool(f"http://127.0.0.1:{port}/x"), "{}")
        except ToolFailed as exc:
            out = f"ToolFailed: {exc}"
    finally:
        await runner.aclose()
        server.close()
    assert out == expected
    out.encode("utf-8")
