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
import re
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
        except (ValueError, RecursionError) as exc:  # RecursionError: nesting too deep to read
            raise ToolFailed(f"the arguments for {tool.name} are not valid JSON") from exc
        if not isinstance(args, dict):
            raise ToolFailed(f"the arguments for {tool.name} must be a JSON object")
        try:
            json.dumps(args, ensure_ascii=False, allow_nan=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            # a lone surrogate ("\ud800" in the model's JSON) has no UTF-8: nothing could send it
            raise ToolFailed(
                f"the arguments for {tool.name} hold text that is not valid Unicode (a lone surrogate)"
            ) from exc
        except (ValueError, RecursionError) as exc:  # 1e999 or NaN: JSON has no such number
            raise ToolFailed(f"the arguments for {tool.name} hold a number JSON cannot carry") from exc
        try:
            async with asyncio.timeout(tool.timeout_s):
                response = await self._send(tool, args)
        except TimeoutError as exc:
            raise ToolFailed(
                f"{tool.name} gave no answer within {tool.timeout_s:g} s", timed_out=True
            ) from exc
        except httpx.HTTPError as exc:
            raise ToolFailed(f"{tool.name} could not be reached ({type(exc).__name__})") from exc
        except httpx.InvalidURL as exc:  # a GET whose arguments make too long a query
            raise ToolFailed(f"the arguments for {tool.name} do not fit in its URL ({exc})") from exc
        if not 200 <= response.status_code < 300:
            body = _printable(_text(response)[:200]).strip()
            raise ToolFailed(f"{tool.name} answered HTTP {response.status_code}: {body}")
        try:
            answer = json.loads(response.content)
        except (ValueError, RecursionError) as exc:
            # not JSON, not in a Unicode encoding, a number too long for int(), nesting too deep
            raise ToolFailed(f"{tool.name} answered something that is not JSON") from exc
        try:
            text = json.dumps(answer, ensure_ascii=False, separators=(",", ":"))
            if _UNSAFE.search(text):
                # NUL (PostgreSQL keeps none in a ticket) or a lone surrogate (no UTF-8 for the
                # model): as JSON escapes instead, which say the same
                text = json.dumps(answer, separators=(",", ":"))
        except (ValueError, RecursionError) as exc:
            raise ToolFailed(f"{tool.name} answered JSON nested too deeply to pass on") from exc
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


_UNSAFE = re.compile("[\x00\ud800-\udfff]")


def _text(response: httpx.Response) -> str:
    """The body as text in its declared charset, else as UTF-8 with replacements."""
    try:
        return response.text
    except (LookupError, ValueError):  # a charset Python does not know, or bytes it cannot decode
        return response.content.decode("utf-8", "replace")


def _printable(text: str) -> str:
    """For a message the model reads and a ticket keeps: no NUL, no lone surrogate, no controls."""
    return "".join(c if c.isprintable() and not _UNSAFE.match(c) else "\ufffd" for c in text)
