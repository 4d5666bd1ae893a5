"""The simulated AMPS host writes genuine 07-0013 lines for the logons it sees, and rolls its log."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from fleet2ban.dev.amps_sim import amps_timestamp, format_disconnect
from fleet2ban.dev.traffic import attempts
from fleet2ban.kafka.local import free_port
from fleet2ban.waiting import wait_for

LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}[+-]\d\d:\d\d \[\d+\] info: 07-0013 client\[(?P<name>.*)\]"
    r"\((?P<host>.+):(?P<port>\d+)\) disconnected: (?P<reason>[^.]+)\.$"
)


def test_timestamp_has_seven_digits_and_an_offset() -> None:
    ts = datetime(2017, 12, 8, 0, 55, 49, 939559, tzinfo=UTC)
    assert amps_timestamp(ts) == "2017-12-07T16:55:49.9395590-08:00"
    line = format_disconnect(ts, "daily-report", "10.1.2.3", 51234, "auth")
    assert (
        line
        == "2017-12-07T16:55:49.9395590-08:00 [26] info: 07-0013 client[daily-report](10.1.2.3:51234) disconnected: auth.\n"
    )


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[int]:
    """The simulator as its own process, as ``fleet2ban dev`` runs it."""
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleet2ban.dev.amps_sim",
            "--log",
            str(tmp_path / "ban.log"),
            "--port",
            str(port),
            "--roll-bytes",
            "4000",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and "listening" in proc.stdout.readline()
        yield port
    finally:
        proc.terminate()
        assert proc.wait(10) is not None


def _lines(path: Path) -> list[re.Match[str]]:
    out = []
    for p in (path.with_name(path.name + ".1"), path):
        if p.exists():
            out += [m for m in map(LINE.match, p.read_text().splitlines()) if m]
    return out


def _wait_lines(path: Path, n: int) -> list[re.Match[str]]:
    def enough() -> list[re.Match[str]] | None:
        got = _lines(path)
        return got if len(got) >= n else None

    return wait_for(enough, 5.0, f"{n} lines in {path}")


def test_logon_outcomes_are_logged_with_reasons(sim: int, tmp_path: Path) -> None:
    port = sim
    outcomes = [a.outcome for a in attempts("badauth", ["127.0.0.1"], 3, port=port)]
    outcomes += [a.outcome for a in attempts("nameclash", ["127.0.0.1"], 2, port=port)]
    outcomes += [a.outcome for a in attempts("legit", ["::1"], 2, port=port)]
    assert outcomes == ["auth"] * 3 + ["name in use"] * 2 + ["ok"] * 2
    lines = _wait_lines(tmp_path / "ban.log", 9)
    reasons = [m["reason"] for m in lines]
    assert reasons.count("auth") == 3
    assert reasons.count("name in use") == 2
    assert reasons.count("connection closed") >= 4  # 2 legit + 2 name holders
    hosts = {m["host"] for m in lines}
    assert hosts <= {"::ffff:127.0.0.1", "::1"}


def test_log_rolls_over_onto_the_same_name(sim: int, tmp_path: Path) -> None:
    list(attempts("badauth", ["127.0.0.1"], 60, port=sim))
    assert len(_wait_lines(tmp_path / "ban.log", 60)) >= 60
    assert (tmp_path / "ban.log.1").exists() and (tmp_path / "ban.log").exists()
    assert (tmp_path / "ban.log").stat().st_size < 4000 + 200


def test_loopback_fleet_without_namespaces_decides_bans(tmp_path: Path) -> None:
    """Without root the dev fleet runs on loopback addresses with dry-run enforcers; bans are still decided."""
    from fleet2ban.audit.reader import iter_all
    from fleet2ban.contract import decode_decision
    from fleet2ban.dev.fleet import DevFleet, DevOptions

    with DevFleet(DevOptions(hosts=2, attackers=1, workdir=tmp_path, netns=False, bantime=5)) as fleet:
        assert not fleet.use_netns and fleet.backend == "dryrun"
        att = fleet.attackers[0]
        outcomes = [a["outcome"] for a in fleet.run_client(att, "spreader", 21, rate=200)]
        assert outcomes == ["auth"] * 21
        assert fleet.cluster is not None
        cluster = fleet.cluster

        def banned() -> bool:
            return any(
                decode_decision(v).ip == att.address and decode_decision(v).action == "ban"
                for _k, v in iter_all(cluster, "decisions", cluster.topics.decisions)
            )

        wait_for(banned, 30.0, f"a ban decision for {att.address}", every=0.1)
        (ban,) = [
            decode_decision(v)
            for _k, v in iter_all(cluster, "decisions", cluster.topics.decisions)
            if decode_decision(v).action == "ban"
        ]
        assert set(ban.hosts) == {"h1", "h2"}
