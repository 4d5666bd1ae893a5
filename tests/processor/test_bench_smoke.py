"""The core benchmark runs (tiny size): the table prints and the core agrees with the reference's bans."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_processor_worker_bench_ships_a_distributed_attack_as_the_shippers_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker bench's backlog (no Kafka here): v2 records per (host, partition, round), each keyed by
    an address of the partition it goes to; the core-alone reference takes every line."""
    monkeypatch.syspath_prepend(str(ROOT))
    from bench.bench_processor_worker import PARTITIONS, core_alone, distinct_records
    from fleet2ban.contract import decode_events_record, partition_for

    recs, lines = distinct_records(500, round_lines=60, lines=3000)
    decoded = [(key, decode_events_record(value)) for key, value in recs]
    assert lines == 3000 == sum(len(r.lines) for _, r in decoded)
    for key, r in decoded:
        assert {partition_for(ln.ip, PARTITIONS) for ln in r.lines} == {partition_for(key, PARTITIONS)}
        assert len(r.lines) <= 60 and r.v == 2
    assert len(recs) < lines / 5  # batched: many addresses per record
    _, fed = core_alone(recs)
    assert fed == lines
