"""Smoke runs of the fleet benchmarks at tiny size: they bring the dev fleet up, measure, and clean up.

Each runs ``python -m bench NAME`` as the user would (a separate process, so a crash cannot leave this
test's process inside a namespace) and checks the figures it writes with ``--json``.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(180)]

ROOT = Path(__file__).resolve().parents[2]


def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _bench(name: str, *args: str, timeout: float = 150) -> tuple[dict[str, object], str]:
    out = Path(
        subprocess.run(
            ["mktemp", "--suffix=.json"], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "bench", name, *args, "--json", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        print(proc.stdout)
        data: dict[str, object] = json.loads(out.read_text())
        return data, proc.stdout
    finally:
        out.unlink(missing_ok=True)


def _left_behind(stdout: str) -> set[str]:
    """The benchmark's namespaces (it names them in its set-up lines) that still exist."""
    made = set(re.findall(r"netns (\S+)", stdout))
    assert made, "the benchmark names its namespaces"
    return made & _namespaces()


def test_time_to_ban_smoke() -> None:
    args = ["--bans", "3", "--warmup", "1", "--gap", "0.2", "--jitter", "0.05"]
    with_f2b = shutil.which("fail2ban-client") is not None
    if not with_f2b:
        args.append("--no-fail2ban")
    res, stdout = _bench("time_to_ban", *args)

    fleet = res["fleet2ban"]
    assert isinstance(fleet, dict)
    assert fleet["n"] == 3, "every fleet2ban ban was observed on every host"
    assert 0 < fleet["p50"] < 15
    stages = res["stages"]
    assert isinstance(stages, dict) and "total (fleet-wide)" in stages
    assert stages["tail+ship (line -> events record)"]["n"] == 3
    trials = res["trials"]
    assert isinstance(trials, list)
    for t in trials:
        if t["system"] == "fleet2ban" and not t["warmup"]:
            assert set(t["applied"]) == {"h1", "h2", "h3"}, "an applied report from every enforcer"
            assert all(v is not None for v in t["first_fail"].values())
            assert t["t0"] <= t["events_ts"] + 0.002 <= t["decision_ts"] + 0.004
    if with_f2b:
        f2b = res["fail2ban"]
        assert isinstance(f2b, dict) and f2b["n"] == 3
        assert not math.isnan(f2b["p50"])
    # nothing left behind (fail2ban ran inside one of them, so it is gone with it)
    assert not _left_behind(stdout)


def test_sustained_smoke() -> None:
    res, stdout = _bench(
        "sustained",
        "--rate",
        "400",
        "--duration",
        "4",
        "--addresses",
        "500",
        "--burst-share",
        "0.25",
        "--drain",
        "40",
    )
    assert res["written"] == 1600
    assert res["shipped"] == res["written"], f"every line written was shipped: {res['shippers']}"
    bursts = res["bursts"]
    assert isinstance(bursts, int) and bursts >= 10
    assert res["decided"] == bursts
    # every ban decided (the bursts, plus a burst cut off at the end that background lines completed)
    all_bans = bursts + res["other_bans"]  # type: ignore[operator]
    for host in ("h1", "h2", "h3"):
        assert res["in_ipset"][host] == all_bans, f"every ban is in {host}'s ipset"  # type: ignore[index]
        assert res["applied"][host] == all_bans  # type: ignore[index]
    rss = res["rss"]
    assert isinstance(rss, list) and rss and "processor" in rss[0]
    assert not _left_behind(stdout)


@pytest.mark.skipif(shutil.which("fail2ban-client") is None, reason="fail2ban is not installed")
def test_footprint_smoke() -> None:
    res, stdout = _bench(
        "footprint",
        "--rates",
        "300",
        "--duration",
        "1",
        "--idle",
        "1",
        "--settle",
        "0.5",
        "--addresses",
        "50",
    )
    phases = res["phases"]
    assert isinstance(phases, list)
    assert [p["name"] for p in phases] == ["idle", "300/s"]
    idle, load = phases
    assert idle["lines"] == 0 and load["lines"] == 300, "every line of the phase was written"
    for p in phases:
        assert set(p["cpu"]) == set(p["rss"]) == {"shipper", "enforcer", "fail2ban"}
        assert all(0 <= v < 2.5 for v in p["cpu"].values()), p["cpu"]
        assert all(5 < v < 2000 for v in p["rss"].values()), "every process was found and measured"
    # both followed the log: reading and parsing 300 lines costs each some CPU
    assert load["cpu"]["shipper"] > 0 and load["cpu"]["fail2ban"] > 0
    assert "ratio" in stdout and "fail2ban's file backend" in stdout
    assert not _left_behind(stdout)
