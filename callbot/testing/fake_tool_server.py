"""A small HTTP tool server for the demo and the tests: an order-status and a line-status lookup.

`POST /orders/status` with `{"order_number": "4417"}` answers the order's status as JSON, as a
company's own API would behind an HTTP tool (README "Tools"); `POST /lines/status` with
`{"customer_number": "4471-2290"}` a broadband line's (the demo's story). It records every request (the
headers included, so a test can check the token reached it) and can be told to misbehave:
`delay_s` (a slow tool), `hold` (an event every answer waits for: a tool as slow as a test
wants), `fail_status` (an HTTP error) or `bad_json` (an answer that is not JSON).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

ORDERS: dict[str, dict[str, str]] = {
    "4417": {"status": "shipped", "carrier": "DHL", "tracking": "JD0146000038", "eta": "Friday"},
    "5120": {"status": "processing", "eta": "next week"},
}


LINES: dict[str, dict[str, str]] = {
    "4471-2290": {"line": "fault detected at the street cabinet", "since": "Monday 07:40"},
}


@dataclass
class ToolRequest:
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeToolServer:
    orders: dict[str, dict[str, str]] = field(default_factory=lambda: dict(ORDERS))
    lines: dict[str, dict[str, str]] = field(default_factory=lambda: dict(LINES))
    delay_s: float = 0.0
    hold: asyncio.Event | None = None
    fail_status: int | None = None
    bad_json: bool = False
    requests: list[ToolRequest] = field(default_factory=list)
    answered: int = 0

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/orders/status", self._status, methods=["POST"]),
                Route("/lines/status", self._line, methods=["POST"]),
            ]
        )

    async def _line(self, request: Request) -> Response:
        body, misbehaving = await self._received(request)
        if misbehaving is not None:
            return misbehaving
        number = str((body or {}).get("customer_number", "")).strip()
        line = self.lines.get(number)
        return JSONResponse({"customer_number": number, **(line or {"line": "no fault found"})})

    async def _received(self, request: Request) -> tuple[Any, Response | None]:
        """Record the request, then wait and misbehave as told: its body, and None to answer."""
        try:
            body = await request.json()
        except ValueError:
            body = None
        self.requests.append(ToolRequest(request.url.path, dict(request.headers), body))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.hold is not None:
            await self.hold.wait()
        self.answered += 1
        if self.fail_status is not None:
            return body, PlainTextResponse("orders database unavailable", status_code=self.fail_status)
        if self.bad_json:
            return body, PlainTextResponse("<html>oops</html>")
        return body, None

    async def _status(self, request: Request) -> Response:
        body, misbehaving = await self._received(request)
        if misbehaving is not None:
            return misbehaving
        number = str((body or {}).get("order_number", "")).strip()
        order = self.orders.get(number)
        if order is None:
            return JSONResponse({"order_number": number, "found": False})
        return JSONResponse({"order_number": number, "found": True, **order})


def tools_yaml(base_url: str, *, timeout_s: float = 5.0, token_var: str = "ORDERS_API_TOKEN") -> str:
    """A tools file declaring this server's lookup (as README "Tools" shows one)."""
    return f"""\
tools:
  - name: lookup_order
    description: Look up the status of a customer's order by its order number.
    parameters:
      type: object
      properties:
        order_number:
          type: string
          description: The order number the caller gives, digits only.
      required: [order_number]
    url: {base_url}/orders/status
    method: POST
    headers:
      Authorization: "Bearer ${{{token_var}}}"
    timeout_s: {timeout_s}
"""
