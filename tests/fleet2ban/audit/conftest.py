"""The audit tests share record builders (audit_helpers.py); importlib import mode needs its dir on the path."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

_here = str(Path(__file__).parent)
if _here not in sys.path:
    sys.path.insert(0, _here)


@pytest.fixture(autouse=True)
def _restore_root_logging() -> Iterator[None]:
    """CLI runs install a handler on the runner's (then closed) stderr: put the root logger back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
