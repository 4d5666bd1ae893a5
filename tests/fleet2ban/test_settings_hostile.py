"""Hostile or careless settings (issue 20): one clear ConfigError line, never a traceback or a hang."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fleet2ban.exceptions import ConfigError
from fleet2ban.settings import load_settings

ALIAS_BOMB = """\
a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def _error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    text = str(info.value)
    assert "\n" not in text, text
    return text


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path: Path) -> None:
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(ALIAS_BOMB)
    started = time.perf_counter()
    assert "aliases" in _error(cfg)
    assert time.perf_counter() - started < 5.0  # generous: it is refused at the first alias


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\x7fELF\x02\x01\x01\x00\x00\x00", "binary"),
        (b"jails:\n  - name: \xff\xfe\n", "not UTF-8"),
        (b"[" * 5000, "nests too deeply"),
        (b"jails: [\n", "YAML"),
        (b"- 1\n- 2\n", "mapping"),
    ],
)
def test_binary_and_broken_files_give_one_line(tmp_path: Path, data: bytes, words: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_bytes(data)
    assert words in _error(cfg)


@pytest.mark.parametrize(
    ("yaml_text", "setting"),
    [
        ("jails: [{name: amps, bantime: .nan}]", "bantime"),
        ("jails: [{name: amps, bantime: .inf}]", "bantime"),
        ("jails: [{name: amps, bantime: 1e12}]", "bantime"),
        ("jails: [{name: amps, bantime: -1e12}]", "bantime"),
        ("jails: [{name: amps, bantime: 0}]", "bantime"),
        ("jails: [{name: amps, findtime: .inf}]", "findtime"),
        ("jails: [{name: amps, maxretry: 0}]", "maxretry"),
        ("jails: [{name: 'amps|x'}]", "name"),
        ("jails: [{name: amps, ports: [70000]}]", "ports"),
        ("jails: [{name: amps, ignoreip: 0.0.0.0/0}]", "ignoreip"),
        ("jails: [{name: amps, ignoreip: '10.0.0.0/8 ::/0'}]", "ignoreip"),
        ("jails: [{name: amps, ignoreip: '::ffff:0:0/96'}]", "ignoreip"),
        ("jails: [{name: amps, ignoreip: '0.0.0.0/1 128.0.0.0/1'}]", "ignoreip"),  # /0 in two halves
        ("jails: [{name: amps, ignoreip: '2000::/3'}]", "ignoreip"),  # every routed IPv6 address
        ("enforcer: {protect: [0.0.0.0/2, 64.0.0.0/2, 128.0.0.0/2]}", "protect"),
        ("processor: {lateness_s: 5, max_future_s: 60}", "max_future_s"),
        ("metrics: {heartbeat_interval_s: 1e6}", "heartbeat_interval_s"),  # readers would refuse them all
        ("jails: [{name: amps, ignoreip: 'fe80::1%eth0'}]", "ignoreip"),
        ("jails: [{name: amps, bantime_increment: {factor: .nan}}]", "factor"),
        ("jails: [{name: amps, bantime_increment: {multipliers: [1, .inf]}}]", "multipliers"),
        ("jails: [{name: amps, bantime_increment: {maxtime: 1e12}}]", "maxtime"),
        ("enforcer: {min_prefix_v4: 0}", "min_prefix_v4"),
        ("enforcer: {min_prefix_v6: 0}", "min_prefix_v6"),
        ("enforcer: {protect: [0.0.0.0/0]}", "protect"),
        ("processor: {lateness_s: .inf}", "lateness_s"),
        ("processor: {max_future_s: -1}", "max_future_s"),
    ],
)
def test_values_that_would_disable_or_crash_banning_are_refused(
    tmp_path: Path, yaml_text: str, setting: str
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert setting in str(info.value)


def test_sane_values_still_load(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "jails: [{name: amps, bantime: -1, ignoreip: '10.0.0.0/8 ::ffff:192.0.2.0/120 172.16.0.0/12 fc00::/7'}]\n"
        "processor: {max_future_s: 2}\nenforcer: {min_prefix_v4: 16}\n"
    )
    s = load_settings(cfg)
    assert [str(n) for n in s.jails[0].ignoreip] == [
        "10.0.0.0/8",
        "192.0.2.0/24",
        "172.16.0.0/12",
        "fc00::/7",
    ]
    assert s.processor.max_future_s == 2 and s.enforcer.min_prefix_v4 == 16


def test_a_bad_value_is_one_line_naming_the_setting_on_the_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from fleet2ban.cli.main import app

    cfg = tmp_path / "c.yaml"
    cfg.write_text("jails: [{name: amps, bantime: .nan, maxretry: 0}]\n")
    result = CliRunner().invoke(app, ["--config", str(cfg), "config", "show"])
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "jails.0.bantime" in line and "jails.0.maxretry" in line
