"""``fleet2ban replay`` with a repeat-offender jail (``source: bans``, issue #18 §4)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import msgspec
from typer.testing import CliRunner

from fleet2ban.cli.main import app
from fleet2ban.contract import Decision

PST = timezone(timedelta(hours=-8))
T0 = datetime(2025, 11, 24, 16, 0, 0, tzinfo=UTC)
CONFIG = (
    "jails:\n"
    "  - {name: amps, reasons: [auth], maxretry: 3, findtime: 10, bantime: 60}\n"
    "  - {name: inuse, reasons: ['name in use'], maxretry: 3, findtime: 10, bantime: 60}\n"
    "  - {name: recidive, source: bans, maxretry: 3, findtime: 86400, bantime: 604800, ports: [9007, 9008]}\n"
)


def line(ts: datetime, ip: str, reason: str = "auth") -> str:
    local = ts.astimezone(PST)
    return (
        f"{local.strftime('%Y-%m-%dT%H:%M:%S.%f')}0-08:00 [26] info: 07-0013 client[app]({ip}:51234)"
        f" disconnected: {reason}.\n"
    )


def decisions(stdout: str) -> list[Decision]:
    return [msgspec.json.decode(x, type=Decision) for x in stdout.splitlines() if x.startswith("{")]


def test_three_bans_in_a_day_from_two_jails_and_two_hosts_ban_for_a_week(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG)
    ip, other = "198.51.100.7", "198.51.100.8"
    h1 = [line(T0 + timedelta(seconds=i), ip) for i in range(3)]  # amps ban at +2 s
    h1 += [line(T0 + timedelta(hours=5, seconds=i), ip, "name in use") for i in range(3)]  # inuse ban
    h2 = [line(T0 + timedelta(hours=23, seconds=i), ip) for i in range(3)]  # amps ban: the third in a day
    h2 += [
        line(T0 + timedelta(hours=k, seconds=i), other) for k in (1, 30, 60) for i in range(3)
    ]  # a day+ apart
    (tmp_path / "h1.log").write_text("".join(h1))
    (tmp_path / "h2.log").write_text("".join(sorted(h2)))
    res = CliRunner().invoke(
        app,
        ["replay", str(tmp_path / "h1.log"), str(tmp_path / "h2.log"), "--config", str(cfg), "--expire-all"],
    )
    assert res.exit_code == 0, res.output
    got = decisions(res.stdout)
    bans = [d for d in got if d.action == "ban"]
    counted = [d for d in bans if d.ip == ip and d.jail != "recidive"]
    assert [d.jail for d in counted] == ["amps", "inuse", "amps"]
    (r,) = [d for d in bans if d.jail == "recidive"]
    assert r.ip == ip and r.at == T0 + timedelta(hours=23, seconds=2)
    assert r.expires_at == r.at + timedelta(weeks=1) and r.ports == [9007, 9008]
    assert r.failures == 3 and r.hosts == ["h1", "h2"] and r.first_failure_at == counted[0].at
    assert [e.split()[1] for e in r.evidence] == [d.id for d in counted]
    # its unban comes at the end of the week (--expire-all), after the other jails' ones
    (u,) = [d for d in got if d.action == "unban" and d.jail == "recidive"]
    assert u.at == r.expires_at and got.index(u) > got.index(r)
    assert "bans=7 (amps=5,inuse=1,recidive=1)" in res.stderr  # `other`: three amps bans, no recidive


def test_the_command_line_window_options_leave_the_recidive_jail_alone(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(CONFIG)
    ip = "203.0.113.5"
    lines = [line(T0 + timedelta(minutes=2 * k, seconds=0.1 * i), ip) for k in range(3) for i in range(2)]
    log = tmp_path / "h.log"
    log.write_text("".join(lines))
    res = CliRunner().invoke(
        app, ["replay", str(log), "--config", str(cfg), "--maxretry", "2", "--bantime", "30"]
    )
    assert res.exit_code == 0, res.output
    bans = [d for d in decisions(res.stdout) if d.action == "ban"]
    assert [d.jail for d in bans] == ["amps", "amps", "amps", "recidive"]
    assert bans[-1].expires_at == bans[-1].at + timedelta(weeks=1)
