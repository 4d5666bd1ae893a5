"""The live allow-list end to end: the real processor and two dry-run enforcers (subprocesses) on the
session's broker, and the operator commands.

An entry covering bans in force lifts them everywhere (an unban decision naming the entry, a tombstone,
``removed`` on every enforcer) and prints the figure "allow-list entry -> bans lifted everywhere (ms)";
failures of an allowed address are evidence only; a stale ban of an allowed address is refused by every
enforcer and applies again once the entry is removed, or once it expires with nobody acting.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer
from test_e2e import E2E, wait_for
from typer.testing import CliRunner

from fleet2ban.cli.main import app
from fleet2ban.contract import BanState, EventBatch, Line, ban_key, encode, partition_for, utcnow
from fleet2ban.kafka import producer_config, resolve
from fleet2ban.settings import KafkaSettings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

ALLOWED = "198.51.100.0/24"


@pytest.fixture
def fleet(kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[E2E]:
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.delenv("FLEET2BAN_CONFIG", raising=False)
    f = E2E(kafka_bootstrap, tmp_path)
    cfg = yaml.safe_load(f.config.read_text())
    cfg["jails"][0]["maxretry"] = 5
    f.config.write_text(yaml.safe_dump(cfg))
    f.start("processor", "processor", "--metrics-port", "0")
    f.start("eA", "enforcer", "--host", "eA")
    f.start("eB", "enforcer", "--host", "eB")
    try:
        yield f
    finally:
        for name in list(f.procs):
            f.stop(name)


def reports(f: E2E, ip: str, kind: str) -> dict[str, dict[str, Any]]:
    """host -> the latest report of ``kind`` about ``ip``."""
    return {r["host"]: r for r in f.js("bans", "show", ip)["reports"] if r["kind"] == kind}


def applied_on(f: E2E, ip: str, hosts: list[str]) -> bool:
    return any(b["ban"]["ip"] == ip and b["coverage"]["applied"] == hosts for b in f.js("bans", "list"))


def test_allow_list_lifts_bans_everywhere_and_is_a_rail_on_every_enforcer(fleet: E2E) -> None:
    f = fleet

    def live() -> bool:
        hosts = f.js("status", code=None)
        return sorted(h["host"] for h in hosts if h["role"] == "enforcer" and not h["silent"]) == ["eA", "eB"]

    wait_for("two live enforcers", live)
    banned = ["198.51.100.10", "198.51.100.11", "203.0.113.60"]
    for ip in banned:
        f.js("bans", "add", ip, "--for", "1h", "--reason", "scanner", "--by", "dave", "--wait", "60")
    for ip in banned:
        wait_for(f"{ip} applied on eA and eB", lambda ip=ip: applied_on(f, ip, ["eA", "eB"]))

    # the entry: written with its author, reason and expiry; the bans it covers are lifted everywhere
    started = time.time()
    entry = f.js("allow", "add", ALLOWED, "--ttl", "1h", "--reason", "partner office", "--by", "alice")
    cli_ms = (time.time() - started) * 1000
    assert entry["network"] == ALLOWED and entry["by"] == "alice" and entry["jail"] == "*"
    written = datetime.fromisoformat(entry["at"])

    def lifted_everywhere() -> list[datetime] | None:
        got = [reports(f, ip, "removed") for ip in banned[:2]]
        if not all(set(r) == {"eA", "eB"} for r in got):
            return None
        return [datetime.fromisoformat(r["at"]) for by_host in got for r in by_host.values()]

    times = wait_for("both bans removed on eA and eB", lifted_everywhere)
    ms = (max(times) - written).total_seconds() * 1000
    print(
        f"\nallow-list entry (its time, then the CLI writes it) -> bans lifted on eA and eB: {ms:.0f} ms"
        f" (the whole `allow add` command took {cli_ms:.0f} ms)"
    )
    show = f.js("bans", "show", "198.51.100.10")
    ban, unban = show["decisions"]
    assert (ban["action"], ban["by"]) == ("ban", "dave")
    assert (unban["action"], unban["origin"], unban["by"]) == ("unban", "auto", "alice")
    assert f"allow-list entry {ALLOWED}" in unban["reason"] and "partner office" in unban["reason"]
    assert show["in_force"] == []
    # each enforcer removed it by the entry (its rail) or by the processor's tombstone, whichever came first
    details = [r["detail"] for r in reports(f, "198.51.100.10", "removed").values()]
    assert all(d == "lifted" or "allow-list entry 198.51.100.0/24" in d for d in details), details
    listed = {b["ban"]["ip"] for b in f.js("bans", "list")}
    assert "203.0.113.60" in listed and not listed & set(banned[:2])
    assert applied_on(f, "203.0.113.60", ["eA", "eB"])  # outside the entry: untouched

    # listed, and audited on decisions like bans
    (e,) = f.js("allow", "list")
    assert (e["network"], e["by"], e["reason"], e["active"]) == (ALLOWED, "alice", "partner office", True)
    assert "partner office" in f.cli("allow", "list").stdout
    # a manual ban of an allowed address is refused before it is written
    refused = f.cli("bans", "add", "198.51.100.12", "--reason", "x", code=1).stderr
    assert "allowed: allow-list entry 198.51.100.0/24" in refused
    hist = f.js("bans", "history", "--since", "10m", "--origin", "manual")
    assert [(d["action"], d["ip"], d["by"]) for d in hist if d["action"] == "allow"] == [
        ("allow", ALLOWED, "alice")
    ]

    # failures of an allowed address are evidence only: a probe in the same partition, sent after
    # them, is banned, the allowed address is not
    cluster = resolve(KafkaSettings(bootstrap_servers=f.bootstrap, topic_prefix=f.prefix, partitions=3))
    allowed_ip = "198.51.100.20"
    part = partition_for(allowed_ip, 3)
    probe = next(
        ip for i in range(1, 250) if partition_for(ip := f"203.0.113.{i}", 3) == part and ip not in banned
    )
    producer = Producer(producer_config(cluster, linger_ms=0))
    for ip in (allowed_ip, probe):
        lines = [
            Line(id=f"h1:{ip}:{i}", ts=utcnow(), port=40000, client="c", reason="auth") for i in range(8)
        ]
        producer.produce(cluster.topics.events, key=ip.encode(), value=encode(EventBatch("h1", ip, lines)))
    producer.flush(10)
    wait_for(
        "the probe banned",
        lambda: any(d["action"] == "ban" for d in f.js("bans", "show", probe)["decisions"]),
    )
    assert f.js("bans", "show", allowed_ip)["decisions"] == []

    # a stale ban of an allowed address (as from a processor that missed the entry): every enforcer refuses it
    def stale(ip: str) -> None:
        now = utcnow()
        state = BanState(
            decision_id=f"stale-{ip}", ip=ip, jail="amps", at=now, expires_at=now.replace(year=now.year + 1)
        )
        producer.produce(cluster.topics.bans, key=ban_key("amps", ip).encode(), value=encode(state))
        producer.flush(10)

    stale("198.51.100.30")
    wait_for(
        "eA and eB refuse the stale ban", lambda: set(reports(f, "198.51.100.30", "skipped")) == {"eA", "eB"}
    )
    assert reports(f, "198.51.100.30", "applied") == {}
    assert all("allowed" in r["detail"] for r in reports(f, "198.51.100.30", "skipped").values())

    # removed: the entry stops applying (the stale ban is applied again), and removing it twice is exit 1
    gone = f.js("allow", "remove", ALLOWED, "--by", "alice", "--reason", "contract ended")
    assert gone["removed"]["network"] == ALLOWED and gone["decision"]["action"] == "unallow"
    assert f.js("allow", "list") == []
    wait_for(
        "the stale ban applied on eA and eB",
        lambda: set(reports(f, "198.51.100.30", "applied")) == {"eA", "eB"},
    )
    assert "no allow-list entry" in f.cli("allow", "remove", ALLOWED, code=1).stdout
    f.js("allow", "add", "203.0.113.200", "--jail", "amps", "--by", "alice")
    assert "there is one in: amps" in f.cli("allow", "remove", "203.0.113.200", code=1).stdout
    assert f.js("allow", "remove", "203.0.113.200", "--jail", "amps")["removed"]["jail"] == "amps"

    # an entry with a TTL stops applying at its expiry with nobody acting
    f.js("allow", "add", "198.51.100.40", "--ttl", "4s", "--by", "alice")
    stale("198.51.100.40")
    wait_for("eA and eB refuse it", lambda: set(reports(f, "198.51.100.40", "skipped")) == {"eA", "eB"})
    wait_for(
        "applied on eA and eB once the entry expired",
        lambda: set(reports(f, "198.51.100.40", "applied")) == {"eA", "eB"},
        timeout=60,
    )
    assert f.js("allow", "list") == [] and len(f.js("allow", "list", "--all")) == 1


def test_bad_input_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before any broker is asked (none is listening here)."""
    monkeypatch.delenv("FLEET2BAN_CONFIG", raising=False)
    for args in (
        ("allow", "add", "0.0.0.0/0", "--by", "x"),
        ("allow", "add", "10.0.0.1%eth0", "--by", "x"),
        ("allow", "add", "10.0.0.1", "--jail", "nope", "--by", "x"),
        ("allow", "add", "10.0.0.1", "--ttl", "soon", "--by", "x"),
        ("allow", "remove", "not-an-address"),
    ):
        res = CliRunner().invoke(app, ["-b", "127.0.0.1:1", *args])
        assert res.exit_code == 2, (args, res.stdout, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
