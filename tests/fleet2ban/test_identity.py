"""Host identity (fleet2ban.identity): Ed25519 signatures on events/reports records, verified against the
fleet's public keys; a host can only ever speak for itself; two keys per host for rotation; rejected
records counted, one log line per topic and host per minute."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from fleet2ban.exceptions import ConfigError
from fleet2ban.identity import (
    CLAIMED_MAX,
    HOST_HEADER,
    OTHER_HOSTS,
    SIG_HEADER,
    IdentitySettings,
    Signer,
    Verifier,
    generate_key,
    load_private_key,
)


def _host(tmp: Path, name: str) -> tuple[Signer, str]:
    pem, public = generate_key()
    path = tmp / f"{name}.pem"
    path.write_bytes(pem)
    return Signer(name, load_private_key(path)), public


VALUE = b'{"v":2,"host":"amps1","lines":[]}'


def test_a_signed_record_verifies_and_names_its_host(tmp_path: Path) -> None:
    amps1, pub1 = _host(tmp_path, "amps1")
    v = Verifier({"amps1": [pub1]}, require=True)
    headers = amps1.headers("events", b"203.0.113.9", VALUE)
    assert v.check("events", b"203.0.113.9", VALUE, headers, claimed_host="amps1")
    assert v.verify("events", b"203.0.113.9", VALUE, headers).host == "amps1"


def test_a_host_cannot_speak_for_another_nor_move_a_signature(tmp_path: Path) -> None:
    amps1, pub1 = _host(tmp_path, "amps1")
    amps2, pub2 = _host(tmp_path, "amps2")
    v = Verifier({"amps1": [pub1], "amps2": [pub2]}, require=True)
    signed = amps2.headers("events", b"203.0.113.9", VALUE)
    # amps2 signs (validly) a record whose payload says amps1
    assert not v.check("events", b"203.0.113.9", VALUE, signed, claimed_host="amps1")
    # amps2 puts amps1's name in the header: its signature does not verify with amps1's key
    forged = [(HOST_HEADER, b"amps1"), (SIG_HEADER, dict(signed)[SIG_HEADER])]
    assert not v.check("events", b"203.0.113.9", VALUE, forged, claimed_host="amps1")
    # tampered value, key or topic kind
    good = amps1.headers("events", b"203.0.113.9", VALUE)
    assert not v.check("events", b"203.0.113.9", VALUE.replace(b"[]", b"[1]"), good, "amps1")
    assert not v.check("events", b"203.0.113.10", VALUE, good, "amps1")
    assert not v.check("reports", b"203.0.113.9", VALUE, good, "amps1")
    # unknown host, unsigned
    assert not v.check(
        "events", b"k", VALUE, _host(tmp_path, "amps9")[0].headers("events", b"k", VALUE), "amps9"
    )
    assert not v.check("events", b"k", VALUE, [], "amps1")
    assert {r for (_k, _h, r) in v.rejected} == {"host-mismatch", "bad-signature", "unknown-host", "unsigned"}


def test_unsigned_records_pass_until_signatures_are_required_but_bad_ones_never(tmp_path: Path) -> None:
    _amps1, pub1 = _host(tmp_path, "amps1")
    lax = Verifier({"amps1": [pub1]}, require=False)
    assert lax.check("events", b"k", VALUE, None, "amps1")
    bad = [(HOST_HEADER, b"amps1"), (SIG_HEADER, b"\0" * 64)]
    assert not lax.check("events", b"k", VALUE, bad, "amps1")


def test_two_keys_per_host_rotate_without_a_gap(tmp_path: Path) -> None:
    old, pub_old = _host(tmp_path, "amps1")
    new, pub_new = _host(tmp_path, "amps1")
    both = Verifier({"amps1": [pub_old, pub_new]}, require=True)
    for signer in (old, new):
        assert both.check("reports", b"amps1", VALUE, signer.headers("reports", b"amps1", VALUE), "amps1")
    after = Verifier({"amps1": [pub_new]}, require=True)
    assert not after.check("reports", b"amps1", VALUE, old.headers("reports", b"amps1", VALUE), "amps1")
    with pytest.raises(ValidationError, match="1 or 2 public keys"):
        IdentitySettings(public_keys={"amps1": [pub_old, pub_new, pub_old]})
    with pytest.raises(ValidationError, match="32 bytes"):
        IdentitySettings(public_keys={"amps1": ["AAAA"]})


def test_rejections_are_counted_and_logged_once_a_minute_per_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _amps1, pub1 = _host(tmp_path, "amps1")
    now = [1000.0]
    v = Verifier({"amps1": [pub1]}, require=True, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="fleet2ban.identity"):
        for _ in range(50):
            v.check("events", b"k", VALUE, None, "amps1")
        v.check("events", b"k", VALUE, None, "amps2")
        now[0] += 61
        v.check("events", b"k", VALUE, None, "amps1")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("dropped events records claiming host amps1: unsigned")
    assert lines[2].endswith("51 so far")
    assert v.rejected[("events", "amps1", "unsigned")] == 51


def test_claimed_host_names_cannot_grow_memory_metrics_or_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A writer without a key claims a fresh host name in each record: before, every one added a counter,
    a metric series and a log line (the once-a-minute limit is per host). Past CLAIMED_MAX they share one;
    the configured hosts are always counted by name (issue 20)."""
    _amps1, pub1 = _host(tmp_path, "amps1")
    v = Verifier({"amps1": [pub1]}, require=True, clock=lambda: 1000.0)
    with caplog.at_level(logging.WARNING, logger="fleet2ban.identity"):
        for i in range(CLAIMED_MAX + 500):
            v.check("events", b"k", VALUE, None, f"ghost-{i}")
        v.check("events", b"k", VALUE, None, "amps1")
    hosts = {h for (_k, h, _r) in v.rejected}
    assert len(hosts) == CLAIMED_MAX + 2 and "amps1" in hosts and OTHER_HOSTS in hosts
    assert v.rejected[("events", OTHER_HOSTS, "unsigned")] == 500
    assert len(caplog.records) == CLAIMED_MAX + 2
    assert len(v._last_log) <= CLAIMED_MAX + 2


def test_a_bad_key_file_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"identity\.key_path"):
        load_private_key(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(ConfigError, match=r"identity.key_path .*junk.pem: not an unencrypted PEM"):
        load_private_key(tmp_path / "junk.pem")


def test_keys_come_from_the_settings(tmp_path: Path) -> None:
    import yaml

    from fleet2ban.settings import load_settings

    amps1, pub1 = _host(tmp_path, "amps1")
    conf = tmp_path / "fleet.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "identity": {
                    "key_path": str(tmp_path / "amps1.pem"),
                    "public_keys": {"amps1": [pub1]},
                    "require_signatures": True,
                }
            }
        )
    )
    s = load_settings(conf, {})
    signer = Signer.from_settings("amps1", s.identity)
    assert signer is not None
    v = Verifier.from_settings(s.identity)
    assert v is not None
    assert v.check("events", b"k", VALUE, signer.headers("events", b"k", VALUE), "amps1")
    assert not v.check("events", b"k", VALUE, amps1.headers("events", b"k", VALUE + b" "), "amps1")
    assert Verifier.from_settings(load_settings(None, {}).identity) is None  # identity not set up here


@pytest.mark.parametrize("command", [["keys", "generate"], ["identity", "keygen"]])
def test_keys_generate_writes_a_private_key_and_prints_its_settings(
    tmp_path: Path, command: list[str]
) -> None:
    import yaml
    from typer.testing import CliRunner

    from fleet2ban.cli.main import app

    out = tmp_path / "amps1.pem"
    res = CliRunner().invoke(app, [*command, "--host", "amps1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.stat().st_mode & 0o777 == 0o600
    printed = IdentitySettings.model_validate(yaml.safe_load(res.stdout)["identity"])
    signer = Signer("amps1", load_private_key(out))
    v = Verifier(printed.public_keys, require=True)
    assert v.check("reports", b"amps1", VALUE, signer.headers("reports", b"amps1", VALUE), "amps1")
    again = CliRunner().invoke(app, [*command, "--host", "amps1", "--out", str(out)])
    assert again.exit_code == 2
