"""`ToolRunner` over HTTP: the agent's tools from the tools file (core/tool_config.py).

The model's arguments go as a JSON body (as query parameters for GET), with the tool's headers;
the tool must answer 2xx with JSON, which goes back to the model as compact JSON text. Every
failure becomes a `ToolFailed` whose message the model can explain to the caller: the HTTP status
and the start of the body, "not JSON", unreachable, or no answer within `timeout_s`. Headers
are never part of a message, a log line or a ticket.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import httpx

from callbot.core.tool_config import HttpTool
from callbot.errors import ToolFailed

log = logging.getLogger(__name__)

MAX_OUTPUT_CHARS = 8000
"""A longer answer is cut: the model reads it aloud, and it is kept on the ticket."""


class HttpToolRunner:
    """One client for every call's tools (connection reuse); `aclose()` at shutdown."""

    def __init__(self, client: httpx.AsyncClient | None = None) -> None:
        self._client = client or httpx.AsyncClient(follow_redirects=False, trust_env=False)
        self._owns_client = client is None

    async def run(self, tool: HttpTool, arguments: str) -> str:
        try:
            args = json.loads(arguments or "{}")
        except ValueError as exc:
            raise ToolFailed(f"the arguments for {tool.name} are not valid JSON") from exc
        if not isinstance(args, dict):
            raise ToolFailed(f"the arguments for {tool.name} must be a JSON object")
        try:
            async with asyncio.timeout(tool.timeout_s):
                response = await self._send(tool, args)
        except TimeoutError as exc:
            raise ToolFailed(
                f"{tool.name} gave no answer within {tool.timeout_s:g} s", timed_out=True
            ) from exc
        except httpx.HTTPError as exc:
            raise ToolFailed(f"{tool.name} could not be reached ({type(exc).__name__})") from exc
        if not 200 <= response.status_code < 300:
            body = response.text[:200].strip()
            raise ToolFailed(f"{tool.name} answered HTTP {response.status_code}: {body}")
        try:
            answer = response.json()
        except ValueError as exc:
            raise ToolFailed(f"{tool.name} answered something that is not JSON") from exc
        text = json.dumps(answer, ensure_ascii=False, separators=(",", ":"))
        if len(text) > MAX_OUTPUT_CHARS:
            log.warning("tool %s answered %d characters; cut to %d", tool.name, len(text), MAX_OUTPUT_CHARS)
            text = text[:MAX_OUTPUT_CHARS]
        return text

    async def _send(self, tool: HttpTool, args: dict[str, Any]) -> httpx.Response:
        headers = dict(tool.headers)
        timeout = httpx.Timeout(tool.timeout_s)
        if tool.method == "GET":
            params = {k: v if isinstance(v, str) else json.dumps(v) for k, v in args.items()}
            return await self._client.get(tool.url, params=params, headers=headers, timeout=timeout)
        return await self._client.request(tool.method, tool.url, json=args, headers=headers, timeout=timeout)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()
