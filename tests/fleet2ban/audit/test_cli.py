"""The operator commands against the local Kafka cluster, with records written by the tests themselves.

Every command in both formats (table and --json), the empty cases, manual bans with the rails, and a
broker that is down (one line, exit 2, within a few seconds).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import msgspec
import pytest
from audit_helpers import Writer, applied, ban, heartbeat, key, unban
from typer.testing import CliRunner

from fleet2ban.cli.main import app
from fleet2ban.contract import utcnow
from fleet2ban.kafka import Cluster
from fleet2ban.kafka.local import free_port

pytestmark = pytest.mark.kafka

Run = Callable[..., Any]


@pytest.fixture
def run(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Run:
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.delenv("FLEET2BAN_CONFIG", raising=False)
    runner = CliRunner()

    def invoke(*args: str, code: int = 0) -> Any:
        res = runner.invoke(
            app, ["-b", cluster.bootstrap, "--topic-prefix", cluster.settings.topic_prefix, *args]
        )
        assert res.exit_code == code, (res.exit_code, res.output, res.exception)
        return res

    return invoke


def js(res: Any) -> Any:
    return msgspec.json.decode(res.stdout)


def test_empty_topics_every_command_both_formats(run: Run) -> None:
    assert "No bans in force." in run("bans", "list").stdout
    assert js(run("bans", "list", "--json")) == []
    assert "No decisions or reports about 203.0.113.9" in run("bans", "show", "203.0.113.9").stdout
    assert js(run("bans", "show", "203.0.113.9", "--json"))["timeline"] == []
    assert "No decisions between" in run("bans", "history").stdout
    assert js(run("bans", "history", "--since", "2h", "--json")) == []
    empty = run("status", code=1).stdout  # no live processor: the fleet decides nothing
    assert "No components seen" in empty and "! no live processor" in empty
    assert js(run("status", "--json", code=1)) == []
    assert "no discrepancies" in run("audit", "verify").stdout
    assert js(run("audit", "verify", "--json"))["ok"] is True


LIVE_S = 120.0
"""The interval the populated components' heartbeats announce."""


def populate(cluster: Cluster) -> dict[str, Any]:
    """A small healthy fleet: 2 enforcers, 1 shipper, 1 processor; 3 bans in force, 1 lifted, 1 old."""
    now = utcnow()
    w = Writer(cluster)
    d1 = ban("203.0.113.1", now - timedelta(seconds=60), hosts=["amps1", "amps2"], failures=25)
    d2 = ban(
        "203.0.113.2", now - timedelta(seconds=50), origin="manual", by="alice", secs=None, reason="scan"
    )
    d3 = ban("2001:db8::7", now - timedelta(seconds=40), secs=3600)
    d4 = ban("203.0.113.4", now - timedelta(seconds=45))
    u4 = unban("203.0.113.4", now - timedelta(seconds=30))
    old = ban("198.51.100.9", now - timedelta(days=2))
    for d in (old, d1, d2, d3, d4, u4):
        w.decision(d)
    for d in (old, d1, d2, d3, d4):
        w.ban_state(d)
    w.tombstone(key(old), now - timedelta(days=2) + timedelta(seconds=120))
    w.tombstone(key(d4), now - timedelta(seconds=30))
    for host in ("e1", "e2"):
        for d in (d1, d2, d3, d4):
            w.report(applied(host, d, d.at + timedelta(seconds=1)), host)
        w.report(applied(host, d4, u4.at + timedelta(seconds=1), kind="removed"), host)
        # heartbeats every 2 minutes: live for the whole test, however slowly a loaded machine runs it
        keys = [key(d1), key(d2), key(d3)]
        w.report(heartbeat(host, now - timedelta(seconds=1), keys=keys, interval=LIVE_S), host)
    w.report(
        heartbeat(
            "s1", now - timedelta(seconds=2), role="shipper", counters={"events_shipped": 7}, interval=LIVE_S
        ),
        "s1",
    )
    w.report(heartbeat("p1", now - timedelta(seconds=2), role="processor", lag=0.25, interval=LIVE_S), "p1")
    w.flush()
    return {"now": now, "d1": d1, "d2": d2, "d3": d3, "d4": d4, "u4": u4, "old": old, "writer": w}


def test_healthy_fleet_every_command_both_formats(run: Run, cluster: Cluster) -> None:
    populate(cluster)
    bans = js(run("bans", "list", "--json"))
    assert [b["ban"]["ip"] for b in bans] == ["2001:db8::7", "203.0.113.2", "203.0.113.1"]
    assert all(b["coverage"]["applied"] == ["e1", "e2"] and b["coverage"]["missing"] == [] for b in bans)
    assert bans[1]["ban"]["origin"] == "manual" and bans[1]["ban"]["by"] == "alice"
    assert bans[1]["ban"]["expires_at"] is None
    out = run("bans", "list").stdout
    assert "203.0.113.1" in out and "manual (alice)" in out and "permanent" in out and "2/2" in out
    assert "3 bans in force; 2 live enforcer(s)" in out
    assert [b["ban"]["ip"] for b in js(run("bans", "list", "--origin", "manual", "--json"))] == [
        "203.0.113.2"
    ]
    assert [b["ban"]["ip"] for b in js(run("bans", "list", "--ip", "2001:db8::/64", "--json"))] == [
        "2001:db8::7"
    ]
    assert js(run("bans", "list", "--jail", "other", "--json")) == []

    hist = js(run("bans", "history", "--since", "1h", "--json"))
    assert [d["ip"] for d in hist] == [
        "203.0.113.1",
        "203.0.113.2",
        "203.0.113.4",
        "2001:db8::7",
        "203.0.113.4",
    ]
    assert [d["action"] for d in hist][-1] == "unban"
    assert [d["ip"] for d in js(run("bans", "history", "--since", "3d", "--until", "1d", "--json"))] == [
        "198.51.100.9"
    ]
    assert [d["ip"] for d in js(run("bans", "history", "--origin", "manual", "--json"))] == ["203.0.113.2"]
    out = run("bans", "history", "--since", "1h").stdout
    assert "unban" in out and "manual (alice)" in out and "5 decision(s)" in out

    show = js(run("bans", "show", "203.0.113.4", "--json"))
    assert [
        (e["kind"], (e["decision"] or e["report"]).get("action") or e["report"]["kind"])
        for e in show["timeline"]
    ] == [
        ("decision", "ban"),
        ("report", "applied"),
        ("report", "applied"),
        ("decision", "unban"),
        ("report", "removed"),
        ("report", "removed"),
    ]
    assert show["in_force"] == []
    out = run("bans", "show", "203.0.113.1").stdout
    assert "is banned" in out and "disconnected: auth" in out and "e2: applied" in out
    assert js(run("bans", "show", "2001:db8:0::7", "--json"))["in_force"][0]["ip"] == "2001:db8::7"

    status = {(h["role"], h["host"]): h for h in js(run("status", "--json"))}
    assert set(status) == {("enforcer", "e1"), ("enforcer", "e2"), ("shipper", "s1"), ("processor", "p1")}
    assert status[("enforcer", "e1")]["applied"] == 3 and not any(h["silent"] for h in status.values())
    assert status[("shipper", "s1")]["counters"] == {"events_shipped": 7.0}
    out = run("status").stdout
    lines = out.splitlines()
    assert lines[0].split() == ["ROLE", "HOST", "STATE", "SEEN", "LAG", "INFO"]
    assert [ln.split()[0] for ln in lines[1:]] == ["processor", "shipper", "enforcer", "enforcer"]
    assert all(len(ln) <= 80 for ln in lines), "fits an 80-column terminal"
    assert next(ln for ln in lines if " s1 " in ln).split()[2:3] == ["Ready"]
    assert "shipped=7" in next(ln for ln in lines if " s1 " in ln)
    assert "applied=3" in next(ln for ln in lines if " e1 " in ln)
    wide = run("status", "--wide").stdout.splitlines()
    assert wide[0].split()[6:] == ["INSTANCE", "VERSION", "UP", "COUNTERS"]

    res = js(run("audit", "verify", "--within", "5s", "--json"))
    assert res["ok"] is True and res["bans_checked"] == 3 and res["live"] == ["e1", "e2"]
    assert "OK" in run("audit", "verify").stdout


def test_verify_fails_naming_the_host(run: Run, cluster: Cluster) -> None:
    f = populate(cluster)
    w: Writer = f["writer"]
    now = utcnow()
    # a new ban that only e1 applied; e2 is alive but never applied it; plus a report nobody decided
    d5 = ban("203.0.113.5", now - timedelta(seconds=20))
    w.decision(d5)
    w.ban_state(d5)
    w.report(applied("e1", d5, d5.at + timedelta(seconds=1)), "e1")
    ghost = ban("203.0.113.66", now - timedelta(seconds=15), did="b-ghost")
    w.report(applied("e1", ghost, now - timedelta(seconds=14)), "e1")
    w.flush()
    res = run("audit", "verify", "--json", code=1)
    found = {(d["kind"], d["host"], d["key"]) for d in js(res)["discrepancies"]}
    assert found == {("missing", "e2", key(d5)), ("untraced", "e1", key(ghost))}
    out = run("audit", "verify", code=1).stdout
    assert "FAILED" in out and "e2 has not applied amps|203.0.113.5" in out
    cov = {b["ban"]["ip"]: b["coverage"] for b in js(run("bans", "list", "--json"))}
    assert cov["203.0.113.5"]["missing"] == ["e2"]
    assert "e2" in run("bans", "list").stdout.split("203.0.113.5", 1)[1].splitlines()[0]


def test_manual_ban_and_remove_are_recorded(run: Run, cluster: Cluster) -> None:
    res = js(
        run("bans", "add", "203.0.113.77", "--for", "10m", "--reason", "port scan", "--by", "carol", "--json")
    )
    d = res["decision"]
    assert (d["action"], d["origin"], d["by"], d["reason"], d["jail"]) == (
        "ban",
        "manual",
        "carol",
        "port scan",
        "amps",
    )
    assert d["expires_at"] is not None and res["mirrored"] is None
    out = run("bans", "add", "203.0.113.0/24", "--permanent", "--reason", "bad net").stdout
    assert "recorded manual ban of 203.0.113.0/24" in out and "permanently" in out
    out = run("bans", "remove", "203.0.113.77", "--reason", "false positive", "--by", "carol").stdout
    assert "recorded manual unban of 203.0.113.77" in out
    hist = js(run("bans", "history", "--since", "5m", "--origin", "manual", "--json"))
    assert [(h["action"], h["ip"]) for h in hist] == [
        ("ban", "203.0.113.77"),
        ("ban", "203.0.113.0/24"),
        ("unban", "203.0.113.77"),
    ]
    show = js(run("bans", "show", "203.0.113.77", "--json"))
    assert [e["decision"]["by"] for e in show["timeline"]] == ["carol", "carol"]


@pytest.mark.parametrize("target", ["127.0.0.1", "169.254.0.9", "10.0.0.0/8", "::1"])
def test_rails_refuse_before_anything_is_written(run: Run, target: str) -> None:
    res = run("bans", "add", target, "--reason", "x", code=1)
    assert "refusing to ban" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert js(run("bans", "history", "--since", "5m", "--json")) == []


def test_usage_errors_exit_2(run: Run) -> None:
    assert "--reason" in run("bans", "add", "203.0.113.1", code=2).stderr
    assert (
        "no jail named" in run("bans", "add", "203.0.113.1", "--jail", "zz", "--reason", "x", code=2).stderr
    )
    assert (
        "not a duration" in run("bans", "add", "203.0.113.1", "--for", "soon", "--reason", "x", code=2).stderr
    )
    assert "not a time" in run("bans", "history", "--since", "yesterday-ish", code=2).stderr
    assert "--ip" in run("bans", "list", "--ip", "nope", code=2).stderr
    assert "--origin" in run("bans", "history", "--origin", "robot", code=2).stderr


@pytest.mark.parametrize(
    "args",
    [
        ["bans", "list"],
        ["bans", "list", "--json"],
        ["bans", "show", "203.0.113.1"],
        ["bans", "history", "--json"],
        ["bans", "add", "203.0.113.1", "--reason", "x"],
        ["bans", "remove", "203.0.113.1", "--reason", "x"],
        ["status"],
        ["audit", "verify", "--json"],
    ],
)
def test_broker_down_one_line_exit_2(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET2BAN_CONNECT_TIMEOUT", "1")
    monkeypatch.delenv("FLEET2BAN_CONFIG", raising=False)
    t = time.monotonic()
    res = CliRunner().invoke(app, ["-b", f"127.0.0.1:{free_port()}", *args])
    took = time.monotonic() - t
    assert res.exit_code == 2, (res.output, res.exception)
    assert res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0], res.stderr
    assert took < 4


def test_no_bootstrap_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLEET2BAN_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("FLEET2BAN_CONFIG", raising=False)
    res = CliRunner().invoke(app, ["bans", "list"])
    assert res.exit_code == 2 and "no Kafka bootstrap configured" in res.stderr
