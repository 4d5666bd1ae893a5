"""Find where a time range starts in a partition by probing record timestamps (no Kafka here).

The embedded broker answers ``offsets_for_times`` from the time it *stored* each batch, not from the
records' timestamps, so for records written with older timestamps (an import, a backlog, a benchmark) its
answer can be offset 0. The reader then searches each partition itself: a *probe* fetches the records at
and after an offset and says their (offset, timestamp); :func:`search` narrows a bracket
``[lo, hi)`` with ``ts(lo) < target <= ts(hi)`` until fewer than ``span`` records remain, every partition
in the same round (one fetch per round).

Guesses interpolate (decision timestamps grow nearly evenly with offset, so a guess usually lands within
a probe's window of the target); two guesses in a row that do not halve the bracket are followed by a
plain bisection, which bounds the worst case at about three times a bisection's rounds. Every record a probe returns narrows the
bracket (a probe returns a whole batch), so a guess that lands in the target's batch ends the search.

The answer is ``lo``: a record older than the target, so (timestamps being monotonic up to the callers'
slack) nothing at or after the target lies before it. Only narrowing ever moves ``lo``, and only to a
record seen older than the target, so a short deadline leaves a correct, if wider, answer.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

NEWEST = 1 << 62
"""The timestamp of "past the end" (and of records without one): newer than any target."""

Seen = list[tuple[int, int]]
"""(offset, timestamp ms) of the records a probe found, ascending offsets; ``[(end, NEWEST)]`` past the end."""

Probe = Callable[[dict[int, int]], dict[int, Seen]]
"""Fetch at each partition's offset; partitions missing from the answer were not answered in time."""


@dataclass
class Bracket:
    """One partition's search state: ``ts(lo) < target <= ts(hi)`` (``hi_ms`` may be an estimate)."""

    lo: int
    lo_ms: int
    hi: int
    hi_ms: int
    bisect_next: bool = False
    misses: int = 0
    """Interpolated guesses in a row that did not halve the bracket."""
    probes: int = 0

    @property
    def span(self) -> int:
        return self.hi - self.lo


def next_guess(b: Bracket, target_ms: int, window: int = 1) -> int:
    """The next offset to probe: interpolated between the bracket's timestamps, or its middle.

    A probe sees ``window`` records from its offset, so an interpolated guess is centred on the estimate
    (an estimate off by less than half a window ends the search) and kept a window below ``hi`` (a
    probe whose records reach ``hi`` settles the top of the bracket instead of shaving one offset)."""
    if not b.bisect_next and b.hi_ms > b.lo_ms:
        frac = (target_ms - b.lo_ms) / (b.hi_ms - b.lo_ms)
        guess = b.lo + int(frac * b.span) - window // 2
    else:
        guess = (b.lo + b.hi) // 2
    return max(min(guess, b.hi - window), b.lo + 1) if b.hi - b.lo > 1 else b.lo


def _fold(b: Bracket, seen: Seen, target_ms: int) -> bool:
    """Narrow the bracket with every record seen; True when ``hi`` moved."""
    for off, ms in seen:
        if off >= b.hi:
            break
        if off <= b.lo:
            continue
        if ms < target_ms:
            b.lo, b.lo_ms = off, ms
        else:
            b.hi, b.hi_ms = off, ms
            return True
    return False


def narrow(b: Bracket, guess: int, seen: Seen, target_ms: int) -> None:
    """Fold one probe's answer at ``guess`` into the bracket."""
    before = b.span
    if not _fold(b, seen, target_ms) and seen and seen[0][0] >= b.hi:
        b.hi = guess  # no record between the guess and hi (a gap in the offsets): narrow anyway
    b.probes += 1
    b.misses = b.misses + 1 if b.span * 2 > before else 0
    # a guess that lands just short leaves a bracket whose next interpolation is usually right: bisect
    # only after two misses in a row (a skewed partition), so the worst case stays logarithmic
    b.bisect_next = b.misses >= 2


def apply_first(b: Bracket, seen: Seen, target_ms: int) -> bool:
    """Fold the probe at ``b.lo`` (the broker's lower bound): False when already late enough."""
    if not seen or seen[0][1] >= target_ms:
        return False
    b.lo, b.lo_ms = seen[0]
    _fold(b, seen[1:], target_ms)
    b.probes += 1
    return True


def search(
    starts: Mapping[int, tuple[int, int]],
    target_ms: int,
    newest_ms: int,
    probe: Probe,
    *,
    span: int,
    window: int = 1,
    max_rounds: int = 64,
) -> dict[int, int]:
    """Narrow each partition's ``(lower bound, end offset)`` to an offset at most ``span`` records before
    the first record at or after ``target_ms``; ``newest_ms`` estimates the newest record's time (now),
    ``window`` is how many records a probe returns. Returns the offset to start reading at per partition."""
    out = {p: lo for p, (lo, _end) in starts.items()}
    todo = {p: (lo, end) for p, (lo, end) in starts.items() if end - lo > span}
    if not todo:
        return out
    first = probe({p: lo for p, (lo, _end) in todo.items()})
    brackets: dict[int, Bracket] = {}
    for p, (lo, end) in todo.items():
        b = Bracket(lo, target_ms - 1, end, max(newest_ms, target_ms + 1))
        if p in first and apply_first(b, first[p], target_ms):
            brackets[p] = b
            out[p] = b.lo
    for _ in range(max_rounds):
        guesses = {p: next_guess(b, target_ms, window) for p, b in brackets.items() if b.span > span}
        if not guesses:
            break
        seen = probe(guesses)
        if not seen:
            break  # a slow broker: keep the bounds found so far
        for p, off in guesses.items():
            if p in seen:
                narrow(brackets[p], off, seen[p], target_ms)
                out[p] = brackets[p].lo
    return out
