"""``fleet2ban replay``: the core over log files, one file per host, merged in event-time order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import msgspec
from typer.testing import CliRunner

from fleet2ban.cli.main import app
from fleet2ban.contract import Decision

PST = timezone(timedelta(hours=-8))
T0 = datetime(2025, 11, 24, 16, 0, 0, tzinfo=UTC)


def line(ts: datetime, ip: str, reason: str = "auth", client: str = "app") -> str:
    local = ts.astimezone(PST)
    return f"{local.strftime('%Y-%m-%dT%H:%M:%S.%f')}0-08:00 [26] info: 07-0013 client[{client}]({ip}:51234) disconnected: {reason}.\n"


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(lines))
    return path


def decisions(stdout: str) -> list[Decision]:
    return [msgspec.json.decode(x, type=Decision) for x in stdout.splitlines() if x.startswith("{")]


def test_failures_spread_over_three_hosts_ban_only_together(tmp_path: Path) -> None:
    ip = "198.51.100.7"
    files = []
    for h, n in (("h1", 7), ("h2", 7), ("h3", 6)):  # none reaches maxretry=20 alone
        files.append(
            write(
                tmp_path / f"{h}.log",
                [line(T0 + timedelta(seconds=0.3 * i + 0.1 * len(files)), ip) for i in range(n)],
            )
        )
    runner = CliRunner()
    for f in files:
        res = runner.invoke(app, ["replay", str(f)])
        assert res.exit_code == 0, res.output
        assert decisions(res.stdout) == []
    res = runner.invoke(app, ["replay", *(str(f) for f in files)])
    assert res.exit_code == 0, res.output
    (d,) = decisions(res.stdout)
    assert d.action == "ban" and d.ip == ip and d.failures == 20 and d.hosts == ["h1", "h2", "h3"]
    assert d.at == T0 + timedelta(seconds=1.9)  # the 20th (last) failure, on h2
    assert d.expires_at == d.at + timedelta(seconds=120)
    assert "bans=1" in res.stderr


def test_named_hosts_options_and_unbans(tmp_path: Path) -> None:
    log = write(tmp_path / "x.log", [line(T0 + timedelta(seconds=i), "10.0.0.9") for i in range(3)])
    res = CliRunner().invoke(
        app, ["replay", f"amps-7={log}", "--maxretry", "3", "--bantime", "30", "--expire-all"]
    )
    assert res.exit_code == 0, res.output
    ban, unban = decisions(res.stdout)
    assert ban.hosts == ["amps-7"] and ban.at == T0 + timedelta(seconds=2)
    assert unban.action == "unban" and unban.at == ban.at + timedelta(seconds=30)


def test_config_file_jails(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "jails:\n"
        "  - {name: auth, reasons: [auth], maxretry: 2, findtime: 5, bantime: 60}\n"
        "  - {name: inuse, reasons: ['name in use'], maxretry: 3, findtime: 5, bantime: 60, ignoreip: [10.0.0.0/8]}\n"
    )
    lines = [line(T0 + timedelta(seconds=i), "192.0.2.1") for i in range(2)]
    lines += [line(T0 + timedelta(seconds=i), "192.0.2.2", "name in use") for i in range(3)]
    lines += [line(T0 + timedelta(seconds=i), "10.1.1.1", "name in use") for i in range(3)]
    log = write(tmp_path / "h.log", lines)
    res = CliRunner().invoke(app, ["replay", str(log), "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    got = sorted((d.jail, d.ip) for d in decisions(res.stdout))
    assert got == [("auth", "192.0.2.1"), ("inuse", "192.0.2.2")]


def test_hostile_client_names_do_not_move_the_ban(tmp_path: Path) -> None:
    hostile = "x](203.0.113.9:1) disconnected: auth."
    log = write(
        tmp_path / "h.log",
        [line(T0 + timedelta(seconds=0.1 * i), "192.0.2.50", client=hostile) for i in range(20)],
    )
    res = CliRunner().invoke(app, ["replay", str(log)])
    (d,) = decisions(res.stdout)
    assert d.ip == "192.0.2.50"


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["replay", str(tmp_path / "nope.log")])
    assert res.exit_code == 2
