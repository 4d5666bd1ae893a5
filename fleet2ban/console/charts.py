"""Stacked bar charts over time as plain data, drawn by the templates as inline SVG (no JS, no library).

``stacked_bars(points, start, end, ...)`` buckets ``(time, series)`` points (failures by host, bans by
jail) into a "nice" bucket size, stacks the series, and returns rectangles in SVG coordinates with axis
ticks. Pure: tests check the counts and geometry without a browser.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from fleet2ban.audit.timeparse import format_duration

NICE_BUCKETS_S: tuple[float, ...] = (
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
)
MAX_SERIES = 8
"""Distinct colours; further series are merged into ``other``."""
OTHER = "other"


@dataclass(frozen=True)
class Series:
    name: str
    css: str
    total: int


@dataclass(frozen=True)
class Rect:
    x: float
    y: float
    w: float
    h: float
    css: str
    title: str


@dataclass(frozen=True)
class Tick:
    pos: float
    label: str


@dataclass(frozen=True)
class Marker:
    x: float
    css: str
    title: str


@dataclass(frozen=True)
class BarChart:
    width: int
    height: int
    left: float
    top: float
    right: float
    bottom: float
    bucket_s: float
    start: datetime
    end: datetime
    total: int
    series: list[Series]
    rects: list[Rect]
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    markers: list[Marker] = field(default_factory=list)

    @property
    def bucket_text(self) -> str:
        return "minute" if self.bucket_s == 60 else format_duration(self.bucket_s)

    @property
    def empty(self) -> bool:
        return self.total == 0


def bucket_size(span_s: float, max_buckets: int, min_bucket_s: float) -> float:
    """The smallest nice bucket (1 s, 2 s, 5 s, ... 1 d) >= ``min_bucket_s`` that fits ``max_buckets``."""
    need = max(span_s / max(max_buckets, 1), min_bucket_s)
    for b in NICE_BUCKETS_S:
        if b >= need:
            return b
    return math.ceil(need / 86400) * 86400


def _nice_max(n: int) -> int:
    if n <= 5:
        return max(n, 1)
    mag = 10 ** (len(str(n)) - 1)
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= n:
            return int(m * mag)
    return n


def _time_label(t: datetime, span_s: float) -> str:
    if span_s <= 120:
        return t.strftime("%H:%M:%S")
    if span_s <= 2 * 86400:
        return t.strftime("%H:%M")
    return t.strftime("%m-%d %H:%M")


def _bucket_counts(
    points: Iterable[tuple[datetime, str]], t0: float, bucket: float, n: int
) -> tuple[dict[int, Counter[str]], Counter[str]]:
    """Per bucket index (of ``n`` from ``t0``), the points of each series; and each series' total."""
    counts: dict[int, Counter[str]] = {}
    totals: Counter[str] = Counter()
    for ts, name in points:
        i = int((ts.timestamp() - t0) // bucket)
        if 0 <= i < n:
            counts.setdefault(i, Counter())[name] += 1
            totals[name] += 1
    return counts, totals


def _series_of(totals: Counter[str]) -> tuple[list[Series], dict[str, str]]:
    """The series drawn, largest first (beyond ``MAX_SERIES`` the smallest share one ``OTHER``), and the
    css class of each series drawn under its own name."""
    ranked = [name for name, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))]
    keep = ranked if len(ranked) <= MAX_SERIES else ranked[: MAX_SERIES - 1]
    merged = set(ranked) - set(keep)
    css = {name: f"s{i}" for i, name in enumerate(keep)}
    series = [Series(name, css[name], totals[name]) for name in keep]
    if merged:
        series.append(Series(OTHER, f"s{MAX_SERIES - 1}", sum(totals[m] for m in merged)))
    return series, css


def _stack(
    counts: Counter[str],
    series: list[Series],
    css: dict[str, str],
    *,
    x: float,
    w: float,
    bottom: float,
    plot_h: float,
    y_max: int,
    label: str,
) -> list[Rect]:
    """One bucket's bar: a rectangle per series present, stacked up from ``bottom`` (``y_max`` points are
    ``plot_h`` pixels)."""
    grouped: Counter[str] = Counter()
    for name, k in counts.items():
        grouped[name if name in css else OTHER] += k
    rects = []
    y = bottom
    for s in series:
        k = grouped.get(s.name, 0)
        if not k:
            continue
        h = plot_h * k / y_max
        y -= h
        rects.append(
            Rect(
                x=round(x, 2),
                y=round(y, 2),
                w=round(max(w - 1, 1), 2),
                h=round(h, 2),
                css=s.css,
                title=f"{label} {s.name}: {k}",
            )
        )
    return rects


def stacked_bars(
    points: Iterable[tuple[datetime, str]],
    start: datetime,
    end: datetime,
    *,
    max_buckets: int = 120,
    min_bucket_s: float = 1.0,
    width: int = 900,
    height: int = 220,
    markers: Iterable[tuple[datetime, str, str]] = (),
) -> BarChart:
    """Bucket ``(time, series name)`` points between ``start`` and ``end`` into stacked bars.

    ``markers``: ``(time, css class, title)`` drawn as vertical lines (decisions on a failures chart).
    """
    if end <= start:
        end = start + timedelta(seconds=1)
    bucket = bucket_size((end - start).total_seconds(), max_buckets, min_bucket_s)
    # align the first bucket on a multiple of the bucket size (readable labels)
    t0 = start.timestamp() // bucket * bucket
    n = max(1, math.ceil((end.timestamp() - t0) / bucket))
    counts, totals = _bucket_counts(points, t0, bucket, n)
    series, css = _series_of(totals)
    left, top, right, bottom = 48.0, 10.0, float(width - 10), float(height - 28)
    plot_w, plot_h = right - left, bottom - top
    peak = max((sum(c.values()) for c in counts.values()), default=0)
    y_max = _nice_max(peak)
    bw = plot_w / n
    start0 = datetime.fromtimestamp(t0, start.tzinfo)
    rects: list[Rect] = []
    for i in sorted(counts):
        b_start = start0 + timedelta(seconds=i * bucket)
        rects.extend(
            _stack(
                counts[i],
                series,
                css,
                x=left + i * bw,
                w=bw,
                bottom=bottom,
                plot_h=plot_h,
                y_max=y_max,
                label=b_start.strftime("%H:%M:%S"),
            )
        )
    span = n * bucket
    step = max(1, n // 6)
    x_ticks = [
        Tick(round(left + i * bw, 2), _time_label(start0 + timedelta(seconds=i * bucket), span))
        for i in range(0, n, step)
        if left + i * bw < right - 40  # room for the label
    ]
    y_ticks = [Tick(round(bottom - plot_h * v / y_max, 2), str(v)) for v in sorted({0, y_max // 2, y_max})]
    out_markers: list[Marker] = []
    for ts, mcss, title in markers:
        frac = (ts.timestamp() - t0) / span
        if 0 <= frac <= 1:
            out_markers.append(Marker(round(left + frac * plot_w, 2), mcss, title))
    return BarChart(
        width=width,
        height=height,
        left=left,
        top=top,
        right=right,
        bottom=bottom,
        bucket_s=bucket,
        start=start0,
        end=start0 + timedelta(seconds=span),
        total=sum(totals.values()),
        series=series,
        rects=rects,
        x_ticks=x_ticks,
        y_ticks=y_ticks,
        markers=out_markers,
    )
