"""fail2ban's ``bantime.increment``: a repeat offender's next ban is longer.

Mirrors fail2ban 1.0 (``server/jail.py`` ``setBanTimeExtra`` and ``server/observer.py``):

- ``ban.Count`` is the number of earlier bans of the address, ``ban.Time`` the jail's bantime.
- The first ban (``Count == 0``) always lasts ``bantime``; fail2ban applies the formula only when the
  address was banned before.
- ``multipliers`` (if any) win over ``formula``: ``Time * factor * multipliers[min(Count, len-1)]``.
- otherwise ``max(Time, formula)`` with fail2ban's default formula
  ``ban.Time * (1<<(ban.Count if ban.Count<20 else 20)) * banFactor``.
- ``maxtime`` caps the result; ``rndtime`` adds (both, like the formula, only for repeat bans) up to that many seconds of jitter. fail2ban uses
  ``random.random()``; here the jitter is derived from a seed (the decision id) so that replays, a
  restarted worker and the brute-force reference agree on the same number.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass

from fleet2ban.contract import MAX_BAN_SECONDS
from fleet2ban.formula import compile_formula, evaluate
from fleet2ban.settings import IncrementSettings
from processor.exceptions import IncrementConfigError

DEFAULT_FORMULA = "ban.Time * (1<<(ban.Count if ban.Count<20 else 20)) * banFactor"


@dataclass(frozen=True, slots=True)
class Ban:
    """What fail2ban's formula sees as ``ban``."""

    Time: float
    Count: int


BanTimeFn = Callable[[float, int, str], float]


def _jitter(seed: str, rndtime: float) -> float:
    digest = hashlib.blake2b(seed.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * rndtime


def compile_increment(opts: IncrementSettings) -> BanTimeFn | None:
    """A function ``(bantime, earlier_bans, seed) -> seconds``; None when the increment is off.

    Raises :class:`IncrementConfigError` when the formula does not evaluate.
    """
    if not opts.enabled:
        return None
    base = _base(opts)

    def fn(bantime: float, count: int, seed: str) -> float:
        if count <= 0:
            return bantime
        try:
            value = base(bantime, count)
        except Exception:  # a formula that fails for this count (overflow...): as long as allowed
            value = math.inf
        if math.isnan(value):
            value = math.inf
        if opts.maxtime is not None:
            value = min(value, opts.maxtime)
        if opts.rndtime:
            value += _jitter(seed, opts.rndtime)
        return min(value, MAX_BAN_SECONDS)  # whatever the formula says: finite, at most ten years

    _check(fn)
    return fn


def _base(opts: IncrementSettings) -> Callable[[float, int], float]:
    """The ban time before maxtime and rndtime: by ``multipliers`` when given, else by the formula."""
    factor = opts.factor
    multipliers = list(opts.multipliers)
    if multipliers:
        return lambda bantime, count: bantime * factor * multipliers[min(count, len(multipliers) - 1)]
    formula = opts.formula or DEFAULT_FORMULA
    try:
        code = compile_formula(formula)  # arithmetic only: no attribute walks, no unbounded integers
    except ValueError as exc:
        raise IncrementConfigError(f"bantime_increment.formula: {exc}: {formula[:80]!r}") from None

    def by_formula(bantime: float, count: int) -> float:
        return max(bantime, float(evaluate(code, Ban(bantime, count), factor)))  # fail2ban-compatible

    return by_formula


def _check(fn: BanTimeFn) -> None:
    """The increment must give a finite, positive time for a few counts: an error naming it otherwise."""
    try:
        for n in (0, 1, 5):
            value = fn(60.0, n, "check")
            if not math.isfinite(value) or value <= 0:
                raise IncrementConfigError(f"bantime_increment gives {value} for ban.Count={n}")
    except IncrementConfigError:
        raise
    except Exception as exc:
        raise IncrementConfigError(f"bantime_increment.formula does not evaluate: {exc}") from None
