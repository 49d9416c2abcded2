"""The HTTP tool runner against a real loopback server: what reaches the tool, what comes back,
and how each failure reads for the model (adapters/http_tools.py)."""

from __future__ import annotations

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
