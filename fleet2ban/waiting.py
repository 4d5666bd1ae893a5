"""Bounded waiting on a condition: the one polling loop that the dev fleet, benchmarks and tests share."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeoutError(TimeoutError, AssertionError):
    """The condition did not hold in time. Both a ``TimeoutError`` (for components) and an
    ``AssertionError`` (so a test that waits fails like an assertion)."""


def wait_for(check: Callable[[], T | None], timeout: float, what: str, every: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy and return that; raise :class:`WaitTimeoutError` naming
    ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise WaitTimeoutError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)
