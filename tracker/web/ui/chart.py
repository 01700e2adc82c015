"""Line charts as SVG, drawn by our own code: axes, gridlines, labels and a legend.

Pure: values in, markup out (every text escaped), so a page needs no script to show it.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from html import escape

WIDTH = 720
HEIGHT = 240
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 36
MAX_X_LABELS = 8


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    values: Sequence[Decimal | int]
    css: str  # the class colouring its line (ui.css)


def nice_step(span: Decimal, ticks: int = 4) -> Decimal:
    """A round step (1, 2 or 5 times a power of ten) giving about `ticks` gridlines."""
    if span <= 0:
        return Decimal(1)
    raw = span / ticks
    power = Decimal(10) ** (raw.adjusted())
    for factor in (1, 2, 5, 10):
        if raw <= power * factor:
            return power * factor
    return power * 10


def _number(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text if "." not in text else text.rstrip("0").rstrip(".")


def line_chart(title: str, labels: Sequence[str], series: Sequence[Series]) -> str:
    """An SVG line chart of `series` over the x `labels` (one point per label)."""
    values = [Decimal(v) for s in series for v in s.values]
    low = min([Decimal(0), *values])
    high = max([Decimal(0), *values])
    step = nice_step(high - low)
    low = (low / step).to_integral_value(rounding="ROUND_FLOOR") * step
    high = (high / step).to_integral_value(rounding="ROUND_CEILING") * step
    if high == low:
        high = low + step
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    count = max(len(labels), 1)

    def x(i: int) -> float:
        return LEFT + (plot_w * i / (count - 1) if count > 1 else plot_w / 2)

    def y(value: Decimal) -> float:
        return TOP + float((high - value) / (high - low)) * plot_h

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    tick = low
    while tick <= high:
        ty = y(tick)
        parts.append(
            f'<line class="grid" x1="{LEFT}" y1="{ty:.1f}" x2="{WIDTH - RIGHT}" y2="{ty:.1f}"/>'
        )
        parts.append(
            f'<text class="axis" x="{LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end">'
            f"{escape(_number(tick))}</text>"
        )
        tick += step
    every = max(1, -(-len(labels) // MAX_X_LABELS))
    for i, label in enumerate(labels):
        if i % every == 0:
            parts.append(
                f'<text class="axis" x="{x(i):.1f}" y="{HEIGHT - BOTTOM + 18}" '
                f'text-anchor="middle">{escape(label)}</text>'
            )
    parts.append(
        f'<line class="axis-line" x1="{LEFT}" y1="{y(Decimal(0)):.1f}" '
        f'x2="{WIDTH - RIGHT}" y2="{y(Decimal(0)):.1f}"/>'
    )
    legend_x = LEFT
    for s in series:
        points = " ".join(f"{x(i):.1f},{y(Decimal(v)):.1f}" for i, v in enumerate(s.values))
        parts.append(f'<polyline class="line {s.css}" points="{points}"/>')
        if len(s.values) == 1:
            cy = y(Decimal(s.values[0]))
            parts.append(f'<circle class="dot {s.css}" cx="{x(0):.1f}" cy="{cy:.1f}" r="3"/>')
        parts.append(f'<rect class="key {s.css}" x="{legend_x}" y="8" width="12" height="12"/>')
        parts.append(f'<text class="legend" x="{legend_x + 16}" y="18">{escape(s.name)}</text>')
        legend_x += 24 + 8 * len(s.name)
    parts.append("</svg>")
    return "".join(parts)
