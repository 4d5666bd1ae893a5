"""The parse benchmark runs end to end at a tiny size (the real run is `python -m bench parse`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_parse_smoke() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "parse", "--lines", "2000", "--no-fail2ban"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "fleet2ban parse" in out and "lines/s" in out
