"""Fixtures for the deployment tests (docker/, k8s/, docs/deploying.md).

The suite runs with ``--import-mode=importlib``, where test modules cannot import their neighbours: this
directory goes on ``sys.path`` so that they can share ``deploy_checks``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """No FLEET2BAN_* variables from the developer's shell leak into a check."""
    for name in list(os.environ):
        if name.startswith("FLEET2BAN_"):
            monkeypatch.delenv(name)
    yield monkeypatch
