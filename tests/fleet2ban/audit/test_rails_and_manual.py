"""Safety rails (fleet2ban.rails) and manual decisions: refused before anything is written."""

from __future__ import annotations

import ipaddress
from datetime import timedelta

import pytest
from audit_helpers import T0

from fleet2ban.audit.exceptions import RailRefusedError
from fleet2ban.audit.manual import manual_ban, manual_unban
from fleet2ban.exceptions import ConfigError
from fleet2ban.rails import check_target
from fleet2ban.settings import Settings, load_settings


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.2", "loopback"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("10.0.0.0/8", "too-wide"),
        ("2001:db8::/32", "too-wide"),
        ("127.0.0.0/30", "loopback"),
        ("not-an-ip", "invalid"),
    ],
)
def test_rails_refuse(target: str, kind: str) -> None:
    assert kind in {v.kind for v in check_target(target)}


def test_rails_allow_and_protect() -> None:
    assert check_target("203.0.113.9") == []
    assert check_target("203.0.113.0/24") == []
    assert check_target("2001:db8:1::/48") == []
    protect = [ipaddress.ip_network("192.0.2.0/28")]
    assert [v.kind for v in check_target("192.0.2.5", protect=protect)] == ["protected"]
    # a network containing a protected address is refused too
    assert [v.kind for v in check_target("192.0.2.0/24", protect=protect)] == ["protected"]
    assert check_target("192.0.2.16/28", protect=protect) == []
    assert [v.kind for v in check_target("10.0.0.0/20", min_prefix_v4=16)] == []


def settings() -> Settings:
    return load_settings(
        None,
        {
            "jails": [
                {"name": "amps", "bantime": 600, "ignoreip": "10.9.0.0/16 192.0.2.1", "ports": [9007, 9008]},
                {"name": "perm", "bantime": -1},
            ],
            "enforcer.protect": ["198.51.100.7"],
        },
    )


def test_manual_ban_defaults_and_durations() -> None:
    s = settings()
    d = manual_ban(
        s, "203.0.113.9", jail=None, duration=None, permanent=False, reason=" scan ", by="bob", now=T0
    )
    assert (d.action, d.origin, d.by, d.reason, d.jail) == ("ban", "manual", "bob", "scan", "amps")
    assert d.expires_at == T0 + timedelta(seconds=600) and d.ports == [9007, 9008]
    assert d.id.startswith("mb-")
    d = manual_ban(s, "203.0.113.9", jail="perm", duration=None, permanent=False, reason="x", by="b", now=T0)
    assert d.expires_at is None and d.jail == "perm"
    d = manual_ban(
        s, "203.0.113.9", jail=None, duration=timedelta(hours=2), permanent=False, reason="x", by="b", now=T0
    )
    assert d.expires_at == T0 + timedelta(hours=2)
    d = manual_ban(s, "[2001:db8::1]", jail=None, duration=None, permanent=True, reason="x", by="b", now=T0)
    assert d.expires_at is None and d.ip == "2001:db8::1"
    u = manual_unban(s, "203.0.113.9", jail=None, reason="oops", by="bob", now=T0)
    assert (u.action, u.origin, u.id[:3]) == ("unban", "manual", "mu-")


@pytest.mark.parametrize(
    "target", ["127.0.0.1", "10.9.3.4", "192.0.2.0/30", "198.51.100.7", "10.0.0.0/8", "fe80::2"]
)
def test_manual_ban_refused_by_rails(target: str) -> None:
    with pytest.raises(RailRefusedError):
        manual_ban(settings(), target, jail=None, duration=None, permanent=False, reason="x", by="b", now=T0)


def test_manual_ban_usage_errors() -> None:
    s = settings()
    with pytest.raises(ConfigError):
        manual_ban(s, "203.0.113.9", jail="nope", duration=None, permanent=False, reason="x", by="b", now=T0)
    with pytest.raises(ConfigError):
        manual_ban(s, "garbage", jail=None, duration=None, permanent=False, reason="x", by="b", now=T0)
    with pytest.raises(ConfigError):
        manual_ban(s, "203.0.113.9", jail=None, duration=None, permanent=False, reason="  ", by="b", now=T0)
