"""Durations (``90s``, ``10m``, ``1h30m``, ``2d``) and points in time (``1h`` ago, or an ISO date)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

from fleet2ban.audit.exceptions import BadTimeError
from fleet2ban.contract import MAX_BAN_SECONDS
from fleet2ban.safetext import printable

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration(text: str) -> timedelta:
    """``90`` (seconds), ``90s``, ``10m``, ``1h30m``, ``2d``, ``1w``, ``250ms`` -> a positive timedelta of at
    most ten years (:data:`~fleet2ban.contract.MAX_BAN_SECONDS`); BadTimeError otherwise (nan, inf...)."""
    shown = printable(text[:40])
    t = text.strip().lower().replace(" ", "")
    if not t:
        raise BadTimeError("empty duration")
    if len(t) > 40:
        raise BadTimeError(f"not a duration: {shown!r}... (too long)")
    try:
        seconds = float(t)
    except ValueError:
        pos = 0
        seconds = 0.0
        for m in _PART.finditer(t):
            if m.start() != pos:
                break
            seconds += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(t) or pos == 0:
            raise BadTimeError(f"not a duration: {shown!r} (examples: 90s, 10m, 1h30m, 2d)") from None
    if not math.isfinite(seconds):
        raise BadTimeError(f"not a duration: {shown!r} (examples: 90s, 10m, 1h30m, 2d)")
    if seconds <= 0:
        raise BadTimeError(f"duration must be positive: {shown!r}")
    if seconds > MAX_BAN_SECONDS:
        raise BadTimeError(f"duration {shown!r} is longer than ten years (use a permanent ban instead)")
    return timedelta(seconds=seconds)


def parse_when(text: str, now: datetime) -> datetime:
    """A point in time: a duration means that long before ``now``; else ISO 8601 (naive = UTC).

    ``now`` (``now``), ``1h`` (an hour ago), ``2026-11-25``, ``2026-11-25T08:00``, ``2026-11-25 08:00:00+01:00``.
    """
    t = text.strip()
    if t.lower() == "now":
        return now
    try:
        return now - parse_duration(t)
    except BadTimeError:
        pass
    try:
        dt = datetime.fromisoformat(t.replace("Z", "+00:00").replace("z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.astimezone(UTC)
    except (ValueError, OverflowError):
        raise BadTimeError(
            f"not a time: {printable(text[:40])!r} (a duration ago such as 1h or 2d, or a date such as"
            " 2026-11-25T08:00)"
        ) from None


def format_duration(seconds: float) -> str:
    """Compact human text of a duration: ``45s``, ``12m``, ``3h05m``, ``2d04h``."""
    s = round(abs(seconds))
    sign = "-" if seconds < 0 else ""
    if s < 60:
        return f"{sign}{s}s"
    if s < 3600:
        return f"{sign}{s // 60}m{s % 60:02d}s" if s % 60 else f"{sign}{s // 60}m"
    if s < 86400:
        return f"{sign}{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{sign}{s // 86400}d{(s % 86400) // 3600:02d}h"
