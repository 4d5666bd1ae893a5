"""``fleet2ban import-fail2ban``: a fail2ban jail (and filter) as fleet2ban settings."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from fleet2ban.cli.main import app
from fleet2ban.settings import load_settings
from processor.exceptions import ImportFail2banError
from processor.import_f2b import import_jail, str2seconds

SEED_FILTER = Path(__file__).parents[1] / "data" / "seed-amps.conf"


def make(tmp: Path, jail: str, filter_text: str | None = None, name: str = "amps") -> Path:
    (tmp / "filter.d").mkdir(exist_ok=True)
    if filter_text is None:
        shutil.copy(SEED_FILTER, tmp / "filter.d" / f"{name}.conf")
    else:
        (tmp / "filter.d" / f"{name}.conf").write_text(filter_text)
    path = tmp / "jail.local"
    path.write_text(jail)
    return path


def test_str2seconds() -> None:
    assert str2seconds("600") == 600
    assert str2seconds("10m") == 600
    assert str2seconds("1h 30m") == 5400
    assert str2seconds("1d") == 86400
    assert str2seconds("-1") == -1
    with pytest.raises(ImportFail2banError):
        str2seconds("soon")


def test_seed_jail_becomes_builtin_parser_settings(tmp_path: Path) -> None:
    jail = make(
        tmp_path,
        "[DEFAULT]\nbantime = 10m\nbackend = polling\n\n"
        "[amps]\nenabled = true\nfilter = amps\nlogpath = /var/log/amps/ban.log\nport = 9007,9008\n"
        "maxretry = 20\nfindtime = 10\nignoreip = 127.0.0.1/8 10.0.0.0/8 ops.example.com\n"
        "bantime.increment = true\nbantime.factor = 2\nbantime.maxtime = 1w\n"
        "action = iptables-ipset[name=amps]\n",
    )
    res = import_jail(jail)
    (j,) = res.settings["jails"]
    assert j == {
        "name": "amps",
        "maxretry": 20,
        "findtime": 10.0,
        "bantime": 600.0,
        "ports": [9007, 9008],
        "ignoreip": ["127.0.0.0/8", "10.0.0.0/8"],
        "bantime_increment": {"enabled": True, "factor": 2.0, "maxtime": 604800.0},
        "reasons": ["auth", "name in use"],
    }
    assert res.settings["shipper"] == {"log_path": "/var/log/amps/ban.log"}
    text = "\n".join(res.notes)
    assert "ops.example.com" in text and "action" in text and "built-in strict parser" in text


def test_custom_filter_is_kept_and_output_loads_as_settings(tmp_path: Path) -> None:
    jail = make(
        tmp_path,
        "[mine]\nenabled = true\nfilter = mine\nmaxretry = 5\nfindtime = 1m\nbantime = -1\nport = ssh\n",
        "[Definition]\nfailregex = ^\\S+ login (failed|locked) from <HOST>:\\d+$\n",
        name="mine",
    )
    result = CliRunner().invoke(app, ["import-fail2ban", str(jail)])
    assert result.exit_code == 0, result.output
    data = yaml.safe_load(result.stdout)
    (j,) = data["jails"]
    assert j["reasons"] == ["failed", "locked"] and j["bantime"] == -1 and j["ports"] == [22]
    assert data["shipper"]["filter_path"].endswith("mine.conf")
    cfg = tmp_path / "out.yaml"
    cfg.write_text(result.stdout)
    s = load_settings(cfg)
    assert s.jails[0].permanent and s.jails[0].findtime == 60


def test_ambiguous_jail_needs_a_name(tmp_path: Path) -> None:
    jail = make(tmp_path, "[a]\nenabled = true\n\n[b]\nenabled = true\n")
    with pytest.raises(ImportFail2banError, match="--jail"):
        import_jail(jail)
    res = import_jail(jail, "b")
    assert res.settings["jails"][0]["name"] == "b"
