"""The session chart as inline SVG, drawn here: no plotting library, so `records report` works
after a plain install.

The modality's main measured quantity over time (pad temperature, acoustic power, delivered
amplitude), the prescribed value as a dashed line when it is the same quantity, and the moments
the output start and the stop were commanded. Vector graphics with text as text: it prints
sharply and the same data always gives the same SVG. Every text is XML-escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from controller.records.history import format_number

# The drawing's own coordinates; it scales to the page's width (about 180 mm on A4).
WIDTH = 640.0
HEIGHT = 200.0
PLOT_LEFT = 58.0
PLOT_RIGHT = 628.0
PLOT_TOP = 10.0
PLOT_BOTTOM = 140.0
TICKS = 5                     # about this many labelled ticks per axis
CHART_MINUTES_AFTER_S = 180.0  # longer sessions are charted in minutes
# A 30-minute session polled at 5 Hz has 9000 samples; more points than this add nothing at
# this width but bytes, so the series is thinned evenly (first and last kept).
MAX_POINTS = 600
MARKERS_UP_TO = 60            # draw a dot per sample only when there are this few
LINE_COLOUR = "#1f5fa8"
GREY = "#666"
GRID = "#ddd"
MARK_DASHES = ("2,3", "6,3,1,3")


@dataclass(frozen=True)
class Quantity:
    """The measured quantity charted for a modality."""

    telemetry: str
    label: str
    unit: str
    prescribed: str | None = None
    """The prescription parameter drawn as a reference line, when it is the same quantity."""


@dataclass(frozen=True)
class ChartSeries:
    times_s: tuple[float, ...]
    values: tuple[float, ...]
    quantity: Quantity
    reference: float | None = None
    marks: tuple[tuple[float, str], ...] = field(default_factory=tuple)


def nice_ticks(low: float, high: float, count: int = TICKS) -> list[float]:
    """Round tick values (steps of 1, 2 or 5 × 10^n) covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return [low]
    raw = (high - low) / max(1, count)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _range(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if high - low < 1e-9:
        return low - 1.0, high + 1.0
    pad = (high - low) * 0.08
    return low - pad, high + pad


def thin(times: Sequence[float], values: Sequence[float],
         limit: int = MAX_POINTS) -> tuple[list[float], list[float]]:
    """At most `limit` points, evenly spaced in index, first and last kept."""
    n = len(times)
    if n <= limit:
        return list(times), list(values)
    picks = sorted({round(i * (n - 1) / (limit - 1)) for i in range(limit)})
    return [times[i] for i in picks], [values[i] for i in picks]


def chart_svg(series: ChartSeries) -> str:
    """The chart as one `<svg>` element."""
    q = series.quantity
    minutes = max([series.times_s[-1], *(t for t, _ in series.marks)]) > CHART_MINUTES_AFTER_S
    scale = 60.0 if minutes else 1.0
    times, values = thin([t / scale for t in series.times_s], series.values)
    marks = [(t / scale, label) for t, label in series.marks]
    x_high = max([*times, *(t for t, _ in marks), 0.0]) or 1.0
    y_low, y_high = _range([*values, *([series.reference] if series.reference is not None
                                        else [])])

    def x(t: float) -> float:
        return PLOT_LEFT + (PLOT_RIGHT - PLOT_LEFT) * t / x_high

    def y(v: float) -> float:
        return PLOT_BOTTOM - (PLOT_BOTTOM - PLOT_TOP) * (v - y_low) / (y_high - y_low)

    title = f"{q.label} ({q.unit}) over time"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH:g} {HEIGHT:g}" '
           f'role="img" aria-label="{_e(title)}" font-family="Helvetica, Arial, sans-serif" '
           'font-size="10">', f"<title>{_e(title)}</title>"]
    for tick in nice_ticks(y_low, y_high):
        out.append(f'<line x1="{PLOT_LEFT:g}" y1="{y(tick):.1f}" x2="{PLOT_RIGHT:g}" '
                   f'y2="{y(tick):.1f}" stroke="{GRID}" stroke-width="0.6"/>')
        out.append(f'<text x="{PLOT_LEFT - 5:g}" y="{y(tick) + 3.5:.1f}" text-anchor="end">'
                   f"{_e(format_number(tick))}</text>")
    for tick in nice_ticks(0.0, x_high):
        out.append(f'<line x1="{x(tick):.1f}" y1="{PLOT_BOTTOM:g}" x2="{x(tick):.1f}" '
                   f'y2="{PLOT_BOTTOM + 4:g}" stroke="{GREY}" stroke-width="0.8"/>')
        out.append(f'<text x="{x(tick):.1f}" y="{PLOT_BOTTOM + 15:g}" text-anchor="middle">'
                   f"{_e(format_number(tick))}</text>")
    out.append(f'<rect x="{PLOT_LEFT:g}" y="{PLOT_TOP:g}" width="{PLOT_RIGHT - PLOT_LEFT:g}" '
               f'height="{PLOT_BOTTOM - PLOT_TOP:g}" fill="none" stroke="{GREY}" '
               'stroke-width="0.8"/>')
    legend = [("measured", f'stroke="{LINE_COLOUR}" stroke-width="1.8"')]
    if series.reference is not None:
        style = f'stroke="{GREY}" stroke-width="1" stroke-dasharray="5,3"'
        out.append(f'<line x1="{PLOT_LEFT:g}" y1="{y(series.reference):.1f}" '
                   f'x2="{PLOT_RIGHT:g}" y2="{y(series.reference):.1f}" {style}/>')
        legend.append(("prescribed", style))
    for (t, label), dash in zip(marks, MARK_DASHES, strict=False):
        style = f'stroke="{GREY}" stroke-width="1" stroke-dasharray="{dash}"'
        out.append(f'<line x1="{x(t):.1f}" y1="{PLOT_TOP:g}" x2="{x(t):.1f}" '
                   f'y2="{PLOT_BOTTOM:g}" {style}/>')
        legend.append((label, style))
    points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in zip(times, values, strict=True))
    out.append(f'<polyline points="{points}" fill="none" stroke="{LINE_COLOUR}" '
               'stroke-width="1.8" stroke-linejoin="round"/>')
    if len(times) <= MARKERS_UP_TO:
        out += [f'<circle cx="{x(t):.1f}" cy="{y(v):.1f}" r="2" fill="{LINE_COLOUR}"/>'
                for t, v in zip(times, values, strict=True)]
    out.append(f'<text x="{(PLOT_LEFT + PLOT_RIGHT) / 2:g}" y="{PLOT_BOTTOM + 30:g}" '
               f'text-anchor="middle">time since the session began '
               f"({'min' if minutes else 's'})</text>")
    out.append(f'<text transform="translate(12 {(PLOT_TOP + PLOT_BOTTOM) / 2:g}) rotate(-90)" '
               f'text-anchor="middle">{_e(q.label)} ({_e(q.unit)})</text>')
    out += _legend(legend)
    out.append("</svg>")
    return "\n".join(out)


def _legend(entries: list[tuple[str, str]]) -> list[str]:
    out = []
    slot = (PLOT_RIGHT - PLOT_LEFT) / max(1, len(entries))
    base = HEIGHT - 8
    for i, (label, style) in enumerate(entries):
        left = PLOT_LEFT + i * slot
        out.append(f'<line x1="{left:.1f}" y1="{base - 3:g}" x2="{left + 22:.1f}" '
                   f'y2="{base - 3:g}" {style}/>')
        out.append(f'<text x="{left + 27:.1f}" y="{base:g}">{_e(label)}</text>')
    return out


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)
