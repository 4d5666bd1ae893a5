"""The shipper tests share helpers (ship_helpers.py); importlib import mode needs its dir on the path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_here = str(Path(__file__).parent)
if _here not in sys.path:
    sys.path.insert(0, _here)


@pytest.fixture(autouse=True)
def _fresh_parser_caches() -> None:
    """Each test starts with the parser's caches empty: what a test checks is computed in that test, not
    taken from whatever ran before it in the process (the caches are module state)."""
    from shipper import parse

    for cache in (parse._ip_cache, parse._ts_cache, parse._utc, parse._fast_ip):
        cache.clear()
