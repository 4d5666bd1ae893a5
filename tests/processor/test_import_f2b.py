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


# ---------------------------------------------------------------- fail2ban's recidive (issue #18 §4)

RECIDIVE_LOCAL = (
    "[DEFAULT]\nbantime = 10m\nfindtime = 10m\nmaxretry = 3\n\n"
    "[amps]\nenabled = true\nfilter = amps\nport = 9007\nmaxretry = 20\nfindtime = 10\n\n"
    "[recidive]\nenabled = true\nlogpath = /var/log/fail2ban.log\nbanaction = %(banaction_allports)s\n"
    "banaction_allports = iptables-allports\n"
)


def test_recidive_becomes_a_jail_of_bans_with_fail2ban_s_recidive_values(tmp_path: Path) -> None:
    res = import_jail(make(tmp_path, RECIDIVE_LOCAL), "recidive")
    (j,) = res.settings["jails"]
    # findtime/bantime: jail.conf's [recidive] values (the section's own beat [DEFAULT] in fail2ban);
    # maxretry: [DEFAULT]'s
    assert j == {
        "name": "recidive",
        "source": "bans",
        "maxretry": 3,
        "findtime": 86400.0,
        "bantime": 604800.0,
    }
    assert "shipper" not in res.settings  # fail2ban's own log is not an AMPS log
    assert any("every port" in n for n in res.notes)
    # with the amps jail imported next to it, the settings are valid and recidive counts amps's bans
    amps = import_jail(make(tmp_path, RECIDIVE_LOCAL), "amps").settings["jails"][0]
    cfg = tmp_path / "fleet2ban.yaml"
    cfg.write_text(yaml.safe_dump({"jails": [amps, j]}))
    from fleet2ban.settings import counted_jails

    assert counted_jails(load_settings(cfg).jails) == {"recidive": ("amps",)}


def test_recidive_section_values_and_a_custom_filter_over_fail2ban_s_log(tmp_path: Path) -> None:
    jail = "[repeat]\nenabled = true\nfilter = f2b-bans\nmaxretry = 4\nfindtime = 2d\nbantime = -1\n"
    ban_filter = "[Definition]\nfailregex = ^%(__prefix_line)s\\s*NOTICE\\s+\\[(?!repeat\\])(?:.*)\\]\\s+Ban\\s+<HOST>\\s*$\n"
    res = import_jail(make(tmp_path, jail, ban_filter, name="f2b-bans"))
    (j,) = res.settings["jails"]
    assert j == {"name": "repeat", "source": "bans", "maxretry": 4, "findtime": 172800.0, "bantime": -1.0}


@pytest.mark.skipif(not Path("/etc/fail2ban/jail.conf").is_file(), reason="needs fail2ban (Debian package)")
def test_the_installed_jail_conf_recidive() -> None:
    res = CliRunner().invoke(app, ["import-fail2ban", "/etc/fail2ban/jail.conf", "--jail", "recidive"])
    assert res.exit_code == 0, res.output
    (j,) = yaml.safe_load(res.stdout)["jails"]
    assert j == {
        "name": "recidive",
        "source": "bans",
        "maxretry": 5,
        "findtime": 86400.0,
        "bantime": 604800.0,
    }
