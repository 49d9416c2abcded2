"""Server-rendered review pages and a JSON API for post-call tickets.

Tickets hold what callers said, so the pages are locked down by default: HTTP Basic auth with
constant-time comparison, 404 for everything when no admin password is configured (off, not
open), Jinja autoescaping for every value (a caller can say anything, including markup), a
strict Content-Security-Policy with no scripts at all, and no stack traces in responses.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.routing import APIRoute

from callbot.core.charts import bar_chart_svg, call_marks, call_points, context_chart_svg
from callbot.core.cost import DEFAULT_PRICE_TABLE, CallCost, Prices, call_cost, price_table
from callbot.core.record import SummaryEvent, ToolCallEvent
from callbot.core.stats import CallStats, compute_stats
from callbot.core.ticket import (
    CATEGORIES,
    PRIORITIES,
    ROLE_LABELS,
    TICKET_SCHEMA,
    TicketStatus,
    format_offset,
    timeline,
)
from callbot.core.ticket_views import TicketFilters, TicketView
from callbot.errors import FilterError, StoreUnavailable
from callbot.ports import TicketReader

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import jinja2
    from markupsafe import Markup

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGE_SIZE = 25

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "Cache-Control": "no-store",
}


class _SecureRoute(APIRoute):
    """Adds the security headers to every answer and turns every failure into a plain one."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def secured(request: Request) -> Response:
            try:
                response = await handler(request)
            except HTTPException as exc:
                response = _error(request, exc.status_code, str(exc.detail), dict(exc.headers or {}))
            except RequestValidationError:
                response = _error(request, 400, "Invalid request parameters.")
            except StoreUnavailable as exc:
                log.warning("review page %s: ticket store unavailable: %s", request.url.path, exc)
                response = _error(request, 503, "The ticket database is unavailable. Try again shortly.")
            except Exception:
                log.exception("review page %s failed", request.url.path)
                response = _error(request, 500, "Internal error.")
            response.headers.update(SECURITY_HEADERS)
            return response

        return secured


def _error(request: Request, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=status, headers=headers)
    template = _templates().get_template("error.html")
    page = template.render(status=status, message=message, **_page_urls(request))
    return HTMLResponse(page, status_code=status, headers=headers)


class _BasicAuth:
    """The admin login; with no password configured the whole review UI does not exist."""

    def __init__(self, user: str, password: str | None) -> None:
        self._user = user.encode()
        self._password = password.encode() if password is not None else None

    def __call__(self, request: Request) -> None:
        if self._password is None:
            raise HTTPException(404, "Not found.")
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        user = password = b""
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
            except (binascii.Error, ValueError):
                user = password = b""
        # Both comparisons always run, so timing tells nothing about which half was wrong.
        user_ok = secrets.compare_digest(user, self._user)
        password_ok = secrets.compare_digest(password, self._password)
        if not (user_ok and password_ok):
            raise HTTPException(
                401,
                "Login required.",
                headers={"WWW-Authenticate": 'Basic realm="callbot tickets", charset="UTF-8"'},
            )


BasicAuth = _BasicAuth  # the same login guards the calls API (web/calls.py)


class _UiEnabled:
    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled

    def __call__(self) -> None:
        if not self._enabled:
            raise HTTPException(404, "Not found.")


def _fmt_time(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value else ""


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "running"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


@cache
def _templates() -> jinja2.Environment:
    """The review pages' templates, loaded at the first page: a server without review traffic
    (or without an admin password) never imports jinja2."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True, undefined=jinja2.StrictUndefined
    )
    env.filters.update(time=_fmt_time, duration=_fmt_duration, offset=format_offset)
    return env


def _page_urls(request: Request) -> dict[str, str]:
    return {
        "css_url": request.url_for("review_css").path,
        "home_url": request.url_for("review_list").path,
        "stats_url": request.url_for("review_stats").path,
    }


@dataclass(frozen=True)
class _ListQuery:
    q: str | None
    status: str | None
    category: str | None
    priority: str | None
    since: str | None
    until: str | None
    page: int
    call_sid: str | None = None
    number: str | None = None

    def filters(self) -> TicketFilters:
        return TicketFilters.from_strings(
            search=self.q, status=self.status, category=self.category, priority=self.priority,
            since=self.since, until=self.until, call_sid=self.call_sid, number=self.number,
        )  # fmt: skip

    def form(self) -> dict[str, str]:
        fields = ("q", "status", "category", "priority", "since", "until", "call_sid", "number")
        return {name: getattr(self, name) or "" for name in fields}

    def url(self, base: str, page: int) -> str:
        params = {k: v for k, v in self.form().items() if v}
        return f"{base}?{urlencode({**params, 'page': page})}"


def _list_query(
    q: str | None = Query(None, max_length=200),
    status: str | None = Query(None, max_length=32),
    category: str | None = Query(None, max_length=32),
    priority: str | None = Query(None, max_length=32),
    since: str | None = Query(None, max_length=40),
    until: str | None = Query(None, max_length=40),
    page: int = Query(1, ge=1, le=1_000_000),
    call_sid: str | None = Query(None, max_length=64),
    number: str | None = Query(None, max_length=40),
) -> _ListQuery:
    return _ListQuery(q, status, category, priority, since, until, page, call_sid, number)


@dataclass(frozen=True)
class _StatsQuery:
    since: str | None
    until: str | None

    def filters(self) -> TicketFilters:
        return TicketFilters.from_strings(since=self.since, until=self.until)

    def form(self) -> dict[str, str]:
        return {"since": self.since or "", "until": self.until or ""}


def _stats_query(
    since: str | None = Query(None, max_length=40), until: str | None = Query(None, max_length=40)
) -> _StatsQuery:
    return _StatsQuery(since, until)


class _ReviewPages:
    def __init__(
        self,
        get_store: Callable[[], TicketReader],
        prices: Mapping[str, Prices],
        summary_trigger_tokens: int | None,
    ) -> None:
        self._get_store = get_store
        self._prices = prices
        self._trigger = summary_trigger_tokens

    def _cost(self, view: TicketView) -> CallCost:
        return call_cost(view.to_record(), self._prices)

    def _store(self) -> TicketReader:
        try:
            return self._get_store()
        except Exception as exc:
            raise StoreUnavailable(f"ticket store not ready: {exc}") from exc

    async def list_page(
        self, request: Request, query: Annotated[_ListQuery, Depends(_list_query)]
    ) -> Response:
        error = None
        try:
            page = await self._store().list(query.filters(), query.page, PAGE_SIZE)
        except FilterError as exc:
            error, page = str(exc), None
        base = request.url_for("review_list").path
        template = _templates().get_template("list.html")
        html = template.render(
            **_page_urls(request),
            form=query.form(),
            error=error,
            page=page,
            statuses=[s.value for s in TicketStatus],
            categories=CATEGORIES,
            priorities=PRIORITIES,
            prev_url=query.url(base, query.page - 1) if page and query.page > 1 else None,
            next_url=query.url(base, query.page + 1) if page and query.page < page.pages else None,
            ticket_url=lambda ticket_id: request.url_for("review_ticket", ticket_id=ticket_id).path,
            api_url=query.url(request.url_for("api_list").path, query.page),
        )
        return HTMLResponse(html, status_code=400 if error else 200)

    async def ticket_page(self, request: Request, ticket_id: int) -> Response:
        view = await self._store().get(ticket_id)
        if view is None:
            raise HTTPException(404, f"Ticket {ticket_id} not found.")
        earlier = []
        for earlier_id in view.memory_ticket_ids:
            seeded = await self._store().get(earlier_id)
            earlier.append(
                {
                    "id": earlier_id,
                    "url": request.url_for("review_ticket", ticket_id=earlier_id).path,
                    "title": seeded.item.title if seeded else None,
                    "started_at": seeded.item.started_at if seeded else None,
                }
            )
        number = view.item.from_number
        list_url = request.url_for("review_list").path
        record = view.to_record()
        marks = call_marks(record)
        points = call_points(record.response_usage)
        duration_ms = int(view.item.duration_s * 1000) if view.item.duration_s is not None else None
        template = _templates().get_template("ticket.html")
        html = template.render(
            **_page_urls(request),
            earlier=earlier,
            number_url=f"{list_url}?{urlencode({'number': number})}" if number else None,
            forget_url=request.url_for("review_forget", ticket_id=ticket_id).path,
            json_url=request.url_for("api_ticket", ticket_id=ticket_id).path,
            t=view.item,
            view=view,
            summary=view.item.summary or {},
            extra_fields=_extra_fields(view.item.summary),
            rows=_timeline_rows(view),
            chart=_safe(context_chart_svg(points, marks, self._trigger, duration_ms=duration_ms)),
            points=points,
            marks=marks,
            trigger=self._trigger,
            cost=self._cost(view),
        )
        return HTMLResponse(html)

    async def forget(self, request: Request, ticket_id: int) -> Response:
        """The review page's "exclude from memory" form (`callbot tickets forget` in the browser)."""
        _same_origin(request)
        if not await self._store().forget(ticket_id):
            raise HTTPException(404, f"Ticket {ticket_id} not found.")
        log.info("ticket %s excluded from returning callers' memory from the review page", ticket_id)
        url = request.url_for("review_ticket", ticket_id=ticket_id).path
        return Response(status_code=303, headers={"Location": url})

    async def api_forget(self, request: Request, ticket_id: int) -> Response:
        _same_origin(request)
        if not await self._store().forget(ticket_id):
            raise HTTPException(404, f"Ticket {ticket_id} not found.")
        return JSONResponse({"id": ticket_id, "memory_excluded": True})

    async def stats_page(
        self, request: Request, query: Annotated[_StatsQuery, Depends(_stats_query)]
    ) -> Response:
        error = None
        stats: CallStats | None = None
        try:
            filters = query.filters()
            stats = compute_stats(
                await self._store().calls(filters), self._prices, since=filters.since, until=filters.until
            )
        except FilterError as exc:
            error = str(exc)
        charts = _stats_charts(stats) if stats is not None else {}
        template = _templates().get_template("stats.html")
        html = template.render(
            **_page_urls(request),
            form=query.form(),
            error=error,
            stats=stats,
            charts=charts,
            api_url=_with_query(request.url_for("api_stats").path, query.form()),
        )
        return HTMLResponse(html, status_code=400 if error else 200)

    async def api_stats(self, query: Annotated[_StatsQuery, Depends(_stats_query)]) -> Response:
        try:
            filters = query.filters()
        except FilterError as exc:
            raise HTTPException(400, str(exc)) from exc
        stats = compute_stats(
            await self._store().calls(filters), self._prices, since=filters.since, until=filters.until
        )
        return JSONResponse(stats.to_json())

    async def api_list(
        self, query: Annotated[_ListQuery, Depends(_list_query)], page_size: int = Query(50, ge=1, le=500)
    ) -> Response:
        try:
            filters = query.filters()
        except FilterError as exc:
            raise HTTPException(400, str(exc)) from exc
        page = await self._store().list(filters, query.page, page_size)
        return JSONResponse(page.to_json())

    async def api_ticket(self, ticket_id: int) -> Response:
        view = await self._store().get(ticket_id)
        if view is None:
            raise HTTPException(404, f"Ticket {ticket_id} not found.")
        return JSONResponse({**view.to_json(), "cost": self._cost(view).to_json()})

    async def css(self) -> Response:
        return Response((STATIC_DIR / "review.css").read_bytes(), media_type="text/css")


def _same_origin(request: Request) -> None:
    """A state-changing POST must come from these pages: browsers send Basic credentials with a
    cross-site form too, so a foreign Origin (or Sec-Fetch-Site) is refused."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        raise HTTPException(403, "Cross-site request refused.")
    origin = request.headers.get("origin")
    if origin is not None and origin != "null":
        host = request.headers.get("host", "")
        if origin.split("://", 1)[-1] != host:
            raise HTTPException(403, "Cross-site request refused.")


def _extra_fields(summary: dict[str, Any] | None) -> list[tuple[str, Any]]:
    """Fields a custom schema added, shown as they are."""
    known = set(TICKET_SCHEMA["properties"])
    return [(k, v) for k, v in (summary or {}).items() if k not in known]


def _timeline_rows(view: TicketView) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for event in timeline(view.to_record()):
        if isinstance(event, SummaryEvent):
            rows.append({"kind": "summary", "at_ms": event.at_ms, "event": event})
        elif isinstance(event, ToolCallEvent):
            rows.append(
                {"kind": "tool", "at_ms": event.started_ms, "until_ms": event.ended_ms, "event": event}
            )
        else:
            rows.append(
                {
                    "kind": "turn",
                    "at_ms": event.spoken_at_ms,
                    "until_ms": event.ended_ms if event.started_ms is not None else None,
                    "entry": event,
                    "label": ROLE_LABELS.get(event.role, event.role),
                }
            )
    return rows


def _with_query(path: str, form: Mapping[str, str]) -> str:
    params = {k: v for k, v in form.items() if v}
    return f"{path}?{urlencode(params)}" if params else path


def _safe(svg: str) -> Markup:
    """Server-built SVG (every value in it escaped by callbot.core.charts) as markup for a template."""
    from markupsafe import Markup  # jinja2's own dependency, loaded with the first page like it

    return Markup(svg)  # the chart functions escape everything they interpolate


def _stats_charts(stats: CallStats) -> dict[str, Markup]:
    def bars(mix: Mapping[str, int]) -> list[tuple[str, float]]:
        return [(label.replace("_", " "), float(n)) for label, n in mix.items()]

    return {
        "per_day": _safe(
            bar_chart_svg(
                [(day, float(n)) for day, n in stats.calls_per_day[-31:]],
                chart_id="chart-calls-per-day",
                title="Calls per day",
                unit=" calls",
            )
        ),
        "status": _safe(
            bar_chart_svg(bars(stats.status_mix), chart_id="chart-status", title="Calls by ticket status")
        ),
        "category": _safe(
            bar_chart_svg(bars(stats.category_mix), chart_id="chart-category", title="Calls by category")
        ),
        "outcome": _safe(
            bar_chart_svg(bars(stats.outcome_mix), chart_id="chart-outcome", title="Calls by outcome")
        ),
    }


def review_router(
    get_store: Callable[[], TicketReader],
    admin_user: str,
    admin_password: str | None,
    *,
    prices: Mapping[str, Prices] | None = None,
    summary_trigger_tokens: int | None = None,
) -> APIRouter:
    """The review UI and JSON API; include it in the app (`app.include_router(...)`).

    `prices` (USD per million tokens by model) prices each call; `summary_trigger_tokens` is
    drawn on each ticket's context chart."""
    router = APIRouter(route_class=_SecureRoute)
    pages = _ReviewPages(
        get_store, prices if prices is not None else price_table(DEFAULT_PRICE_TABLE), summary_trigger_tokens
    )
    auth = [Depends(_BasicAuth(admin_user, admin_password))]
    html: dict[str, Any] = {"methods": ["GET"], "include_in_schema": False, "response_class": HTMLResponse}
    router.add_api_route("/tickets", pages.list_page, name="review_list", dependencies=auth, **html)
    # before /tickets/{ticket_id}, which would otherwise take "stats" for an id (and answer 400)
    router.add_api_route("/tickets/stats", pages.stats_page, name="review_stats", dependencies=auth, **html)
    router.add_api_route(
        "/api/tickets/stats", pages.api_stats, name="api_stats", dependencies=auth, methods=["GET"]
    )
    router.add_api_route(
        "/tickets/{ticket_id}", pages.ticket_page, name="review_ticket", dependencies=auth, **html
    )
    router.add_api_route(
        "/tickets/{ticket_id}/forget",
        pages.forget,
        name="review_forget",
        dependencies=auth,
        methods=["POST"],
        include_in_schema=False,
    )
    router.add_api_route(
        "/api/tickets/{ticket_id}/forget",
        pages.api_forget,
        name="api_forget",
        dependencies=auth,
        methods=["POST"],
    )
    router.add_api_route("/api/tickets", pages.api_list, name="api_list", dependencies=auth, methods=["GET"])
    router.add_api_route(
        "/api/tickets/{ticket_id}", pages.api_ticket, name="api_ticket", dependencies=auth, methods=["GET"]
    )
    # The stylesheet holds nothing secret; it needs no login, so browsers that send credentials
    # only with the page's own request still get it. It is gone too when the UI is off.
    router.add_api_route(
        "/review-static/review.css",
        pages.css,
        name="review_css",
        dependencies=[Depends(_UiEnabled(admin_password is not None))],
        methods=["GET"],
        include_in_schema=False,
    )
    return router
