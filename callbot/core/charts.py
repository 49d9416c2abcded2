"""Server-rendered SVG charts for the review pages: a call's context over time, and small bars.

Pure functions from plain data to SVG text: no JavaScript, every value escaped, colours from the
page's stylesheet through class names (with presentation attributes as a fallback, since the
pages' Content-Security-Policy forbids inline styles). Each chart carries its own text
alternative (`<title>` and `<desc>`); the pages add a table of the same figures.

The context chart's marks are a plain list (`Mark(kind, at_ms, label)`), so any event with a
time can be one: summaries, barge-ins, tool calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from callbot.core.record import CallRecord, ResponseUsage

MARK_KINDS = ("summary", "barge_in", "tool")


@dataclass(frozen=True, slots=True)
class Mark:
    """Something that happened at `at_ms` in the call. A summary also has the context size
    before and after it (`tokens_before`/`tokens_after`)."""

    kind: str
    at_ms: int
    label: str
    tokens_before: int | None = None
    tokens_after: int | None = None


@dataclass(frozen=True, slots=True)
class Point:
    at_ms: int
    input_tokens: int


def _seconds(ms: int) -> str:
    minutes, seconds = divmod(max(0, ms) // 1000, 60)
    return f"{minutes:02d}:{seconds:02d}"


def call_marks(record: CallRecord) -> list[Mark]:
    """The chart's marks for a call: each in-call summary and each barge-in, in time order."""
    marks: list[Mark] = []
    for s in record.summaries:
        after = "?" if s.tokens_after is None else f"{s.tokens_after:,}"
        marks.append(
            Mark(
                "summary",
                s.at_ms,
                f"summary {s.summary_id}: {s.tokens_before:,} → {after} tokens "
                f"({s.turns_folded} turns folded)",
                tokens_before=s.tokens_before,
                tokens_after=s.tokens_after,
            )
        )
    for e in record.transcript:
        if e.role != "assistant" or not e.interrupted:
            continue
        if e.started_ms is not None and e.heard_ms is not None:
            at_ms = e.started_ms + e.heard_ms
        else:
            at_ms = e.ended_ms if e.ended_ms is not None else e.at_ms
        heard = "" if e.heard_ms is None else f" after {e.heard_ms / 1000:.1f} s"
        marks.append(Mark("barge_in", at_ms, f"barge-in: the caller cut the assistant off{heard}"))
    marks.sort(key=lambda m: (m.at_ms, m.kind))
    return marks


def call_points(usages: Sequence[ResponseUsage]) -> list[Point]:
    return [Point(u.at_ms, u.input_tokens) for u in usages]


def _nice_ceiling(value: float) -> int:
    """A round axis maximum at or above `value` (1, 2 or 5 times a power of ten)."""
    if value <= 0:
        return 1
    magnitude = 1
    while magnitude * 10 <= value:
        magnitude *= 10
    for step in (1, 2, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude  # pragma: no cover - the loop always returns


@dataclass(frozen=True, slots=True)
class _Frame:
    width: int
    height: int
    left: int = 64
    right: int = 16
    top: int = 24
    bottom: int = 36

    @property
    def plot_w(self) -> int:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> int:
        return self.height - self.top - self.bottom


def context_chart_svg(
    points: Sequence[Point],
    marks: Sequence[Mark],
    trigger_tokens: int | None,
    *,
    duration_ms: int | None = None,
    width: int = 760,
    height: int = 280,
) -> str:
    """Input tokens per response over call time, the summary trigger as a line, and the marks."""
    frame = _Frame(width, height)
    end_ms = max([duration_ms or 0, *(p.at_ms for p in points), *(m.at_ms for m in marks), 1000])
    peak = max(
        [trigger_tokens or 0, *(p.input_tokens for p in points)] + [m.tokens_before or 0 for m in marks] + [1]
    )
    y_max = _nice_ceiling(peak * 1.1)

    def x(ms: int) -> float:
        return frame.left + frame.plot_w * ms / end_ms

    def y(tokens: int) -> float:
        return frame.top + frame.plot_h * (1 - tokens / y_max)

    counts = {kind: sum(1 for m in marks if m.kind == kind) for kind in MARK_KINDS}
    desc = (
        f"{len(points)} responses over {_seconds(end_ms)} of call; largest input "
        f"{max((p.input_tokens for p in points), default=0):,} tokens"
        + (f"; summary trigger at {trigger_tokens:,} tokens" if trigger_tokens else "")
        + f"; {counts['summary']} summaries, {counts['barge_in']} barge-ins, {counts['tool']} tool calls."
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart context-chart" id="context-chart" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-labelledby="context-chart-title context-chart-desc" data-end-ms="{end_ms}">',
        '<title id="context-chart-title">Context size per response over the call</title>',
        f'<desc id="context-chart-desc">{escape(desc)}</desc>',
    ]
    # axes and grid
    for i in range(5):
        tokens = y_max * i // 4
        yy = y(tokens)
        out.append(
            f'<line class="grid" x1="{frame.left}" y1="{yy:.1f}" x2="{width - frame.right}" '
            f'y2="{yy:.1f}" stroke="#e4e7ec"/>'
            f'<text class="axis" x="{frame.left - 6}" y="{yy + 4:.1f}" text-anchor="end" '
            f'font-size="11" fill="#667085">{tokens:,}</text>'
        )
    for i in range(6):
        ms = end_ms * i // 5
        out.append(
            f'<text class="axis" x="{x(ms):.1f}" y="{height - frame.bottom + 16}" text-anchor="middle" '
            f'font-size="11" fill="#667085">{_seconds(ms)}</text>'
        )
    out.append(
        f'<text class="axis-label" x="{frame.left + frame.plot_w / 2:.1f}" y="{height - 4}" '
        f'text-anchor="middle" font-size="11" fill="#667085">'
        "call time (mm:ss) · input tokens per response</text>"
    )
    if trigger_tokens:
        yy = y(trigger_tokens)
        out.append(
            f'<g class="trigger" data-tokens="{trigger_tokens}"><title>summary trigger: '
            f"{trigger_tokens:,} tokens</title>"
            f'<line x1="{frame.left}" y1="{yy:.1f}" x2="{width - frame.right}" y2="{yy:.1f}" '
            f'stroke="#d92d20" stroke-dasharray="6 4"/>'
            f'<text x="{width - frame.right - 4}" y="{yy - 5:.1f}" text-anchor="end" font-size="11" '
            f'fill="#d92d20">summary trigger {trigger_tokens:,}</text></g>'
        )
    for m in marks:
        xx = x(m.at_ms)
        out.append(
            f'<g class="mark mark-{escape(m.kind)}" data-kind="{escape(m.kind)}" data-at-ms="{m.at_ms}">'
            f"<title>{escape(_seconds(m.at_ms))} {escape(m.label)}</title>"
            f'<line x1="{xx:.1f}" y1="{frame.top}" x2="{xx:.1f}" y2="{frame.top + frame.plot_h}" '
            f'stroke="{_MARK_COLOURS.get(m.kind, "#475467")}" stroke-width="1.5"/>'
        )
        if m.tokens_before is not None:
            yb = y(m.tokens_before)
            out.append(f'<circle class="before" cx="{xx:.1f}" cy="{yb:.1f}" r="4" fill="#f79009"/>')
            if m.tokens_after is not None:
                ya = y(m.tokens_after)
                out.append(
                    f'<line class="drop" x1="{xx:.1f}" y1="{yb:.1f}" x2="{xx:.1f}" y2="{ya:.1f}" '
                    f'stroke="#f79009" stroke-width="4"/>'
                    f'<circle class="after" cx="{xx:.1f}" cy="{ya:.1f}" r="4" fill="#12b76a"/>'
                )
        glyph = _MARK_GLYPHS.get(m.kind, "•")
        out.append(
            f'<text x="{xx:.1f}" y="{frame.top - 6}" text-anchor="middle" font-size="11" '
            f'fill="{_MARK_COLOURS.get(m.kind, "#475467")}">{glyph}</text></g>'
        )
    if points:
        coords = " ".join(f"{x(p.at_ms):.1f},{y(p.input_tokens):.1f}" for p in points)
        out.append(
            f'<polyline class="series" points="{coords}" fill="none" stroke="#2454d6" stroke-width="2"/>'
        )
        for p in points:
            out.append(
                f'<circle class="point" cx="{x(p.at_ms):.1f}" cy="{y(p.input_tokens):.1f}" r="3" '
                f'fill="#2454d6" data-at-ms="{p.at_ms}" data-tokens="{p.input_tokens}">'
                f"<title>{_seconds(p.at_ms)} response: {p.input_tokens:,} input tokens</title></circle>"
            )
    else:
        out.append(
            f'<text x="{frame.left + frame.plot_w / 2:.1f}" y="{frame.top + frame.plot_h / 2:.1f}" '
            f'text-anchor="middle" font-size="13" fill="#667085">no per-response usage recorded</text>'
        )
    out.append("</svg>")
    return "".join(out)


_MARK_COLOURS = {"summary": "#f79009", "barge_in": "#7a5af8", "tool": "#0e9384"}
_MARK_GLYPHS = {"summary": "S", "barge_in": "B", "tool": "T"}


def bar_chart_svg(
    bars: Sequence[tuple[str, float]],
    *,
    chart_id: str,
    title: str,
    unit: str = "",
    width: int = 360,
    bar_height: int = 18,
) -> str:
    """Horizontal bars, one per (label, value): a small chart for the dashboard."""
    label_w, value_w, gap = 120, 70, 6
    height = max(1, len(bars)) * (bar_height + gap) + gap
    peak = max([v for _, v in bars] + [0]) or 1
    plot_w = width - label_w - value_w
    summary = "; ".join(f"{label}: {_number(value)}{unit}" for label, value in bars) or "no data"
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart bar-chart" id="{escape(chart_id)}" '
        f'viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'aria-labelledby="{escape(chart_id)}-title {escape(chart_id)}-desc">',
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>',
        f'<desc id="{escape(chart_id)}-desc">{escape(summary)}</desc>',
    ]
    for i, (label, value) in enumerate(bars):
        top = gap + i * (bar_height + gap)
        w = plot_w * value / peak
        out.append(
            f'<g class="bar" data-label="{escape(label)}" data-value="{_number(value)}">'
            f"<title>{escape(label)}: {_number(value)}{escape(unit)}</title>"
            f'<text x="{label_w - 6}" y="{top + bar_height - 5}" text-anchor="end" font-size="11" '
            f'fill="#1d2433">{escape(_clip(label, 18))}</text>'
            f'<rect x="{label_w}" y="{top}" width="{w:.1f}" height="{bar_height}" rx="3" fill="#2454d6"/>'
            f'<text x="{label_w + w + 4:.1f}" y="{top + bar_height - 5}" font-size="11" '
            f'fill="#667085">{escape(_number(value))}{escape(unit)}</text></g>'
        )
    if not bars:
        out.append(
            f'<text x="{width / 2}" y="{height - 6}" text-anchor="middle" font-size="11">no data</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.4g}"


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
