"""``bans import`` / ``bans export``: fail2ban's own database (written by fail2ban's code), CSV, JSON and
blocklists through the same rails as ``bans add``; the export read back by the import."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from audit_helpers import Writer, ban
from typer.testing import CliRunner

from fleet2ban.audit import importer
from fleet2ban.audit.reader import read_decisions
from fleet2ban.cli.main import app
from fleet2ban.contract import MAX_BAN_SECONDS, decode_decision, encode, utcnow
from fleet2ban.exceptions import ConfigError
from fleet2ban.kafka import Cluster
from fleet2ban.settings import load_settings

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)

FAIL2BAN_PY = "/usr/bin/python3"
MAKE_DB = """
import sys, time
from fail2ban.server.database import Fail2BanDb
from fail2ban.server.ticket import BanTicket

class Actions:
    def getBanTime(self):
        return 600

class Jail:
    def __init__(self, name):
        self.name = name
        self.actions = Actions()

db = Fail2BanDb(sys.argv[1])
now = time.time()
for name, ip, ago, bantime in [
    ("amps", "203.0.113.10", 10, 600),    # in force: 590 s left
    ("amps", "203.0.113.11", 1000, 600),  # expired
    ("amps", "2001:db8::7", 5, -1),       # permanent
    ("amps", "127.0.0.1", 1, 600),        # refused by the rails
    ("sshd", "198.51.100.4", 1, 600),     # a jail fleet2ban does not have
]:
    jail = Jail(name)
    db.addJail(jail)
    ticket = BanTicket(ip, now - ago)
    ticket.setBanTime(bantime)
    db.addBan(jail, ticket)
"""


def test_lines_csv_and_json_give_the_same_bans_with_defaults_and_explicit_ends(tmp_path: Path) -> None:
    settings = load_settings(None, {})
    (tmp_path / "list.txt").write_text("# blocklist\n203.0.113.5   # scanner\n\n198.51.100.0/24 ; a net\n")
    (tmp_path / "b.csv").write_text(
        "IP,jail,expires_at,reason\n203.0.113.5,,,\n198.51.100.0/24,amps,permanent,net\n"
    )
    (tmp_path / "b.json").write_text(
        '{"ip": "203.0.113.5"}\n{"ip": "198.51.100.0/24", "jail": "amps", "expires_at": null}\n'
    )
    got = {}
    for name, fmt in (("list.txt", "lines"), ("b.csv", "csv"), ("b.json", "json")):
        p = importer.plan(
            importer.read_items(tmp_path / name, fmt),  # type: ignore[arg-type]
            settings,
            now=NOW,
            jail=None,
            ttl=timedelta(hours=1) if fmt == "lines" else None,
            reason="imported",
            by="ops",
        )
        assert not p.refused and p.expired == 0
        got[fmt] = {(d.jail, d.ip): d.expires_at for d in p.decisions}
        assert all(d.origin == "manual" and d.by == "ops" for d in p.decisions)
    assert got["lines"] == {
        ("amps", "203.0.113.5"): NOW + timedelta(hours=1),
        ("amps", "198.51.100.0/24"): NOW + timedelta(hours=1),
    }
    bantime = timedelta(seconds=settings.jails[0].bantime)
    for fmt in ("csv", "json"):
        assert got[fmt] == {("amps", "203.0.113.5"): NOW + bantime, ("amps", "198.51.100.0/24"): None}


def test_rails_refuse_and_each_refusal_names_its_line(tmp_path: Path) -> None:
    settings = load_settings(None, {"enforcer.min_prefix_v4": 24})
    (tmp_path / "l.txt").write_text("127.0.0.1\n10.0.0.0/8\nnot-an-address\n2001:db8::1%eth0\n203.0.113.9\n")
    p = importer.plan(
        importer.read_items(tmp_path / "l.txt", "lines"),
        settings,
        now=NOW,
        jail=None,
        ttl=None,
        reason="r",
        by="o",
    )
    assert [d.ip for d in p.decisions] == ["203.0.113.9"]
    refused = {r.where.rsplit(":", 1)[1]: r for r in p.refused}
    assert set(refused) == {"1", "2", "3", "4"}
    assert ("loopback" in refused["1"].why and "wider" in refused["2"].why) or "prefix" in refused["2"].why


def test_an_expiry_beyond_ten_years_is_refused_not_written(tmp_path: Path) -> None:
    """Issue 20: ``expires_at: 9999-12-31T23:59:59Z`` (or a fail2ban bantime of a century) made a decision
    every reader's decoder drops: 'wrote 1 manual ban', and no ban, in force or in the audit."""
    settings = load_settings(None, {})
    far = NOW + timedelta(seconds=MAX_BAN_SECONDS + 86400 * 2)
    (tmp_path / "f.csv").write_text(
        "ip,expires_at\n203.0.113.5,9999-12-31T23:59:59Z\n"
        f"203.0.113.6,{far.isoformat()}\n203.0.113.7,{(NOW + timedelta(days=3650)).isoformat()}\n"
    )
    p = importer.plan(
        importer.read_items(tmp_path / "f.csv", "csv"),
        settings,
        now=NOW,
        jail=None,
        ttl=None,
        reason="r",
        by="o",
    )
    assert [d.ip for d in p.decisions] == ["203.0.113.7"]
    assert {r.target for r in p.refused} == {"203.0.113.5", "203.0.113.6"}
    assert all("ten years" in r.why for r in p.refused)
    for d in p.decisions:
        assert decode_decision(encode(d)) == d  # what is written passes every reader's decoder


def test_duplicates_keep_the_longest_and_ids_are_stable(tmp_path: Path) -> None:
    settings = load_settings(None, {})
    later, sooner = NOW + timedelta(hours=5), NOW + timedelta(hours=1)
    rows = [
        {"ip": "203.0.113.5", "expires_at": sooner.isoformat()},
        {"ip": "203.0.113.5", "expires_at": later.isoformat()},
        {"ip": "203.0.113.5", "expires_at": sooner.isoformat()},
    ]
    (tmp_path / "d.json").write_text(json.dumps(rows))

    def run() -> importer.Plan:
        items = importer.read_items(tmp_path / "d.json", "json")
        return importer.plan(items, settings, now=NOW, jail=None, ttl=None, reason="r", by="o")

    first, second = run(), run()
    (d,) = first.decisions
    assert d.expires_at == later and first.duplicates == 2
    assert [x.id for x in second.decisions] == [d.id], "importing the same file twice writes the same ids"


def test_bad_files_are_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("address,jail\n1.2.3.4,amps\n")
    with pytest.raises(ConfigError, match="'ip' column"):
        list(importer.read_items(tmp_path / "x.csv", "csv"))
    (tmp_path / "x.json").write_text('{"ip": 5}\n')
    with pytest.raises(ConfigError, match="'ip' string"):
        list(importer.read_items(tmp_path / "x.json", "json"))
    (tmp_path / "t.json").write_text('{"ip": "1.2.3.4", "expires_at": "tomorrow"}\n')
    with pytest.raises(ConfigError, match="RFC 3339"):
        list(importer.read_items(tmp_path / "t.json", "json"))
    (tmp_path / "bin").write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(ConfigError, match="UTF-8"):
        list(importer.read_items(tmp_path / "bin", "lines"))
    with pytest.raises(ConfigError, match="fail2ban database"):
        list(importer.read_items(tmp_path / "x.csv", "fail2ban-db"))


@pytest.mark.fail2ban
@pytest.mark.skipif(shutil.which("fail2ban-client") is None, reason="needs the fail2ban Debian package")
def test_a_database_written_by_fail2ban_imports_what_is_in_force(tmp_path: Path) -> None:
    db = tmp_path / "fail2ban.sqlite3"
    subprocess.run([FAIL2BAN_PY, "-c", MAKE_DB, str(db)], check=True, capture_output=True)
    now = utcnow()
    p = importer.plan(
        importer.read_items(db, "fail2ban-db"),
        load_settings(None, {}),
        now=now,
        jail=None,
        ttl=None,
        reason="from fail2ban",
        by="ops",
    )
    by_ip = {d.ip: d for d in p.decisions}
    assert set(by_ip) == {"203.0.113.10", "2001:db8::7"}
    assert by_ip["2001:db8::7"].expires_at is None, "a permanent fail2ban ban stays permanent"
    left = (by_ip["203.0.113.10"].expires_at or now) - now
    assert timedelta(seconds=560) < left <= timedelta(seconds=591), "what is left of the ban is kept"
    assert p.expired == 1
    assert {r.target for r in p.refused} == {"127.0.0.1", "198.51.100.4"}
    assert any("--jail" in r.why for r in p.refused), "an unknown jail says how to map it"
    # mapped by --jail, the sshd ban comes in too
    mapped = importer.plan(
        importer.read_items(db, "fail2ban-db"),
        load_settings(None, {}),
        now=now,
        jail="amps",
        ttl=None,
        reason="r",
        by="o",
    )
    assert "198.51.100.4" in {d.ip for d in mapped.decisions}

    res = CliRunner().invoke(
        app, ["bans", "import", str(db), "--format", "fail2ban-db", "--dry-run", "--json"]
    )
    assert res.exit_code == 1, res.output  # refused entries make it exit 1
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    assert {x["ip"]: x["expires_at"] is None for x in lines} == {"203.0.113.10": False, "2001:db8::7": True}
    assert all(
        x["jail"] == "amps" and (x["expires_at"] is None or x["expires_at"].endswith("Z")) for x in lines
    )


@pytest.mark.kafka
def test_import_writes_manual_decisions_and_export_round_trips(cluster: Cluster, tmp_path: Path) -> None:
    base = ["-b", cluster.bootstrap, "--topic-prefix", cluster.settings.topic_prefix]
    runner = CliRunner()
    n = 300
    (tmp_path / "many.txt").write_text("".join(f"203.0.{113 + i // 250}.{i % 250 + 1}\n" for i in range(n)))
    started = utcnow()
    res = runner.invoke(
        app,
        [
            *base,
            "bans",
            "import",
            str(tmp_path / "many.txt"),
            "--format",
            "lines",
            "--ttl",
            "2h",
            "--by",
            "ops",
        ],
    )
    assert res.exit_code == 0, res.output
    written = [d for d in read_decisions(cluster, started - timedelta(seconds=5), None)]
    assert len(written) == n and all(d.origin == "manual" and d.by == "ops" for d in written)
    assert {d.ip for d in written} == {f"203.0.{113 + i // 250}.{i % 250 + 1}" for i in range(n)}

    # export reads `bans` (the processor's mirror; written here directly): in force only, and import
    # reads the export back
    w = Writer(cluster)
    now = utcnow()
    w.ban_state(ban("198.51.100.1", now, secs=3600, origin="manual", reason="x\x1b[2J"))
    w.ban_state(ban("198.51.100.2", now, secs=None))
    w.ban_state(ban("198.51.100.3", now - timedelta(hours=2), secs=60))  # ended
    w.flush()
    for fmt in ("csv", "json", "lines"):
        out = runner.invoke(app, [*base, "bans", "export", "--format", fmt])
        assert out.exit_code == 0, out.output
        assert "\x1b" not in out.stdout
        path = tmp_path / f"export.{fmt}"
        path.write_text(out.stdout)
        p = importer.plan(
            importer.read_items(path, fmt),  # type: ignore[arg-type]
            load_settings(None, {}),
            now=now,
            jail=None,
            ttl=None,
            reason="back",
            by="o",
        )
        assert {d.ip for d in p.decisions} == {"198.51.100.1", "198.51.100.2"}
        if fmt != "lines":
            ends = {d.ip: d.expires_at for d in p.decisions}
            assert ends["198.51.100.2"] is None
            assert (
                ends["198.51.100.1"] is not None
                and abs((ends["198.51.100.1"] - (now + timedelta(hours=1))).total_seconds()) < 1
            )


@pytest.mark.kafka
def test_dry_run_writes_nothing(cluster: Cluster, tmp_path: Path) -> None:
    base = ["-b", cluster.bootstrap, "--topic-prefix", cluster.settings.topic_prefix]
    (tmp_path / "l.txt").write_text("203.0.113.77\n")
    t0 = time.time()
    res = CliRunner().invoke(
        app, [*base, "bans", "import", str(tmp_path / "l.txt"), "--format", "lines", "--dry-run"]
    )
    assert res.exit_code == 0 and "would ban 203.0.113.77" in res.stdout
    assert read_decisions(cluster, datetime.fromtimestamp(t0 - 5, UTC), None) == []
