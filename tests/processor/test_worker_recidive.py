"""Repeat offenders across jails (issue #18 §4) on the real broker: a ``source: bans`` jail in a worker,
its decision on ``decisions`` and ``bans``, its window across a kill -9, and ``fleet2ban bans show``."""

from __future__ import annotations

import signal
from datetime import timedelta
from typing import Any

import pytest
from typer.testing import CliRunner

from fleet2ban.cli.main import app
from fleet2ban.contract import Decision, decode_ban
from fleet2ban.kafka import read_to_end
from processor.app import TABLE_NAME
from processor.policy import decode_state

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

FLEET_CONFIG: dict[str, Any] = {
    "jails": [
        {"name": "amps", "reasons": ["auth"], "maxretry": 3, "findtime": 600, "bantime": 1},
        {"name": "short", "reasons": ["name in use"], "maxretry": 3, "findtime": 10, "bantime": 1},
        {
            "name": "recidive",
            "source": "bans",
            "jails": ["amps"],
            "maxretry": 3,
            "findtime": 3600,
            "bantime": 600,
            "ports": [9007, 9008],
        },
    ],
    "processor": {"expiry_interval_s": 0.2, "lateness_s": 5.0},
}


def _ban_then_expiry(fleet, ip: str, n: int, reason: str = "auth") -> Decision:  # type: ignore[no-untyped-def]
    """``n``-th automatic ban of ``ip`` (3 failures), waited for together with its expiry."""
    fleet.fail(ip, 3, reason=reason, host=f"h{n}")
    got = [d for d in fleet.wait_decision(ip, count=n) if d.jail != "recidive"]
    fleet.wait_decision(ip, "unban", count=n, timeout=15)
    return got[n - 1]


def _recidive_window(fleet, ip: str) -> int:  # type: ignore[no-untyped-def]
    """How many bans the changelog's latest state of ``ip`` holds in the recidive window."""
    topic = f"{fleet.prefix}fleet2ban-processor-{TABLE_NAME}-changelog"
    latest = None
    for msg in read_to_end(fleet.cluster, topic, timeout=10):
        if msg.key == ip.encode():
            latest = msg.value
    if latest is None:
        return 0
    js = decode_state(latest).jails.get("recidive")
    return 0 if js is None else len(js.window)


def test_three_amps_bans_ban_in_the_recidive_jail_everywhere_and_show_in_the_audit(fleet) -> None:  # type: ignore[no-untyped-def]
    ip = "203.0.113.70"
    a1 = _ban_then_expiry(fleet, ip, 1)
    # a ban in a jail the recidive jail does not count (jails: [amps]) changes nothing
    fleet.fail(ip, 3, reason="name in use")
    fleet.wait_for("the short ban", lambda: any(d.jail == "short" for d in fleet.decisions(ip)), 30)
    a2 = _ban_then_expiry(fleet, ip, 3)
    fleet.fail(ip, 3, host="h9")
    r = fleet.wait_for(
        "the recidive ban", lambda: next((d for d in fleet.decisions(ip) if d.jail == "recidive"), None), 30
    )
    a3 = next(
        d
        for d in fleet.decisions(ip)
        if d.jail == "amps" and d.action == "ban" and d.id not in (a1.id, a2.id)
    )
    assert r.action == "ban" and r.origin == "auto" and r.at == a3.at
    assert r.expires_at == r.at + timedelta(seconds=600) and r.ports == [9007, 9008]
    assert r.failures == 3 and r.first_failure_at == a1.at and r.hosts == ["h1", "h3", "h9"]
    assert [e.split()[1] for e in r.evidence] == [a1.id, a2.id, a3.id]
    key = b"recidive|" + ip.encode()
    fleet.wait_for("the recidive ban on bans", lambda: fleet.bans().get(key) is not None, 20)
    state = decode_ban(fleet.bans()[key])  # type: ignore[arg-type]
    assert state.decision_id == r.id and state.expires_at == r.expires_at and state.ports == [9007, 9008]
    # the audit view: the recidive ban with the bans that counted
    res = CliRunner().invoke(
        app,
        [
            "-c",
            str(fleet.config_path),
            "-b",
            fleet.cluster.bootstrap,
            "--topic-prefix",
            fleet.prefix,
            "bans",
            "show",
            ip,
        ],
    )
    assert res.exit_code == 0, res.output
    assert "is banned in jail recidive" in res.stdout and "bans counted 3" in res.stdout
    assert all(d.id in res.stdout for d in (a1, a2, a3, r))


def test_the_recidive_window_survives_kill_9(fleet) -> None:  # type: ignore[no-untyped-def]
    ip = "203.0.113.71"
    b1 = _ban_then_expiry(fleet, ip, 1)
    b2 = _ban_then_expiry(fleet, ip, 2)
    # the window is in the changelogged state (no events replay could give a day of bans back)
    fleet.wait_for(
        "two bans in the changelog's recidive window", lambda: _recidive_window(fleet, ip) == 2, 20
    )
    old = fleet.workers[-1]
    old.send_signal(signal.SIGKILL)
    old.wait(10)
    fleet.start_worker()
    fleet.ready(timeout=90)
    fleet.fail(ip, 3, host="h3")
    r = fleet.wait_for(
        "the recidive ban after the restart",
        lambda: next((d for d in fleet.decisions(ip) if d.jail == "recidive"), None),
        30,
    )
    assert r.failures == 3 and [e.split()[1] for e in r.evidence][:2] == [b1.id, b2.id]
    assert len([d for d in fleet.decisions(ip) if d.jail == "recidive"]) == 1
