"""``python -m bench import`` at a tiny size on the session's cluster: the table prints, every address
became one decision, and the command is compared with the raw produce loop of the same run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.kafka

ROOT = Path(__file__).parents[3]


def test_import_bench_smoke(kafka_bootstrap: str) -> None:
    env = {**os.environ, "FLEET2BAN_BENCH_BOOTSTRAP": kafka_bootstrap, "FLEET2BAN_BENCH_REPLICATION": "3"}
    res = subprocess.run(
        [sys.executable, "-m", "bench", "import", "--bans", "300"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert "decisions written by the import: 300 " in res.stdout, res.stdout
    m = re.search(
        r"^fleet2ban bans import \(whole command\)\s+([\d.]+)\s+[\d,]+\s+([\d.]+)x$", res.stdout, re.M
    )
    assert m and float(m[1]) > 0 and float(m[2]) > 0, res.stdout
