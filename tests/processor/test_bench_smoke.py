"""The core benchmark runs (tiny size): the table prints and the core agrees with the reference's bans."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_processor_core_bench_smoke() -> None:
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "processor_core",
            "--events",
            "20000",
            "--background",
            "500",
            "--parse",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = {
        m[0].strip(): int(m[1]) for m in re.findall(r"^(\D+?)\s+[\d,]+\s+[\d.]+\s+(\d+)", res.stdout, re.M)
    }
    assert len(rows) == 4, res.stdout
    assert len(set(rows.values())) == 1 and next(iter(rows.values())) > 0, res.stdout
