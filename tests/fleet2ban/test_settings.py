"""The settings model: file < environment < flags, and one clear error naming a bad setting."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fleet2ban.cli.main import app
from fleet2ban.exceptions import ConfigError
from fleet2ban.settings import Settings, env_names, load_settings


def test_defaults_are_the_seed_jail() -> None:
    s = load_settings()
    (jail,) = s.jails
    assert (jail.name, jail.maxretry, jail.findtime, jail.bantime, jail.ports) == (
        "amps",
        20,
        10.0,
        120.0,
        [9007],
    )
    assert jail.reasons == ["auth", "name in use"]
    assert s.kafka.bootstrap_servers is None and s.kafka.topic_prefix == "fleet2ban."


def test_file_then_env_then_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "f.yaml"
    cfg.write_text(
        "kafka:\n  partitions: 3\n  topic_prefix: file.\n  bootstrap_servers: filehost:9092\n"
        "jails:\n  - name: amps\n    maxretry: 5\n    ignoreip: 10.0.0.0/8 192.168.1.1\n"
    )
    monkeypatch.setenv("FLEET2BAN_KAFKA__PARTITIONS", "4")
    monkeypatch.setenv("FLEET2BAN_KAFKA__TOPIC_PREFIX", "env.")
    s = load_settings(cfg, {"kafka.topic_prefix": "flag.", "kafka.replication_factor": None})
    assert s.kafka.bootstrap_servers == "filehost:9092"  # file only
    assert s.kafka.partitions == 4  # env over file
    assert s.kafka.topic_prefix == "flag."  # flag over env
    assert s.jails[0].maxretry == 5
    assert s.jails[0].ignoreip == [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("192.168.1.1/32")]


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "f.yaml"
    cfg.write_text("enforcer:\n  backend: dryrun\n")
    monkeypatch.setenv("FLEET2BAN_CONFIG", str(cfg))
    assert load_settings().enforcer.backend == "dryrun"


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"kafka.partitions": 0}, "kafka.partitions"),
        ({"kafka.bootstrap_servers": "no-port"}, "kafka.bootstrap_servers"),
        ({"enforcer.backend": "pf"}, "enforcer.backend"),
        ({"jails": [{"name": "a", "ports": [70000]}]}, "jails.0.ports"),
        ({"jails": [{"name": "a"}, {"name": "a"}]}, "jails"),
        ({"jails": [{"name": "a", "ignoreip": ["not-a-net"]}]}, "jails"),
        ({"nonsense": 1}, "nonsense"),
    ],
)
def test_bad_values_name_the_setting(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, overrides)
    assert named in str(err.value)


def test_bad_environment_value_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET2BAN_ENFORCER__MAX_BANS", "lots")
    with pytest.raises(ConfigError, match=r"enforcer\.max_bans"):
        load_settings()


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(scalar)
    # a key that is not text, at any depth (found by the settings fuzz test: "?" alone is a null key)
    for text, where in (("?\n", "None [(]under the top level"), ("kafka:\n  1: x\n", "1 [(]under kafka"),
                        ("jails:\n  - name: a\n    ? \n", "None [(]under jails\\[0\\]")):  # fmt: skip
        keyed = tmp_path / "keyed.yaml"
        keyed.write_text(text)
        with pytest.raises(ConfigError, match=f"setting names must be text, not {where}"):
            load_settings(keyed)


def test_env_names_cover_nested_settings() -> None:
    names = env_names()
    assert {"FLEET2BAN_KAFKA__BOOTSTRAP_SERVERS", "FLEET2BAN_ENFORCER__BACKEND", "FLEET2BAN_JAILS"} <= names
    assert set(Settings.model_fields) == {n.removeprefix("FLEET2BAN_").split("__")[0].lower() for n in names}


def test_cli_reports_a_bad_setting_with_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET2BAN_KAFKA__PARTITIONS", "-3")
    result = CliRunner().invoke(app, ["topics", "create", "--bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 2
    assert "kafka.partitions" in result.output
    assert "Traceback" not in result.output


def test_cli_version_and_help() -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).output.startswith("fleet2ban ")
    assert runner.invoke(app, ["--help"]).exit_code == 0


def test_config_show_prints_effective_settings_with_secrets_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    monkeypatch.setenv("FLEET2BAN_KAFKA__SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("FLEET2BAN_ENFORCER__BACKEND", "dryrun")
    result = CliRunner().invoke(app, ["--topic-prefix", "acme.", "config", "show"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.output)
    assert shown["kafka"]["topic_prefix"] == "acme." and shown["enforcer"]["backend"] == "dryrun"
    assert "hunter2" not in result.output
    # what it prints loads back as the same settings
    assert (
        load_settings(None, {"kafka.topic_prefix": "acme."}).jails[0].maxretry
        == shown["jails"][0]["maxretry"]
    )


def test_config_env_lists_the_accepted_variables() -> None:
    result = CliRunner().invoke(app, ["config", "env"])
    assert result.exit_code == 0
    assert set(result.output.split()) == env_names()


def test_a_jail_counting_a_shorter_v6_prefix_than_events_are_partitioned_by_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"kafka\.partition_prefix_v6"):
        load_settings(None, {"jails": [{"name": "wide", "ban_prefix_v6": 48}]})
    s = load_settings(
        None, {"kafka": {"partition_prefix_v6": 48}, "jails": [{"name": "wide", "ban_prefix_v6": 48}]}
    )
    assert s.kafka.partition_prefix_v6 == 48
    assert Settings().kafka.partition_prefix_v6 == 64  # every jail's default /128 fits
