"""fleet2ban/rails.py: what is refused over each whole range (not only its first address), what the
operator's settings change, and the words of each refusal (scripts/mutate fleet2ban/rails.py)."""

from __future__ import annotations

import ipaddress

import pytest

from fleet2ban.rails import Rails, RailViolation, check_target
from fleet2ban.settings import EnforcerSettings, JailSettings

# (kind, range, an address just outside it that nothing else refuses, or None)
ALWAYS = [
    ("loopback", "127.0.0.0/8", "128.0.0.1"),
    ("loopback", "::1/128", "::2"),
    ("link-local", "169.254.0.0/16", "169.255.0.1"),
    ("link-local", "fe80::/10", "fec0::1"),
    ("unspecified", "0.0.0.0/8", "1.0.0.1"),
    ("unspecified", "::/128", None),
    ("multicast", "224.0.0.0/4", "223.255.255.254"),
    ("multicast", "ff00::/8", "fe00::1"),
    ("multicast", "255.255.255.255/32", "255.255.255.254"),
]


def _inside(net: str) -> list[str]:
    """The first, a middle and the last address of ``net``."""
    n = ipaddress.ip_network(net)
    return sorted({str(n[0]), str(n[n.num_addresses // 2]), str(n[-1])})


@pytest.mark.parametrize(("kind", "net", "outside"), ALWAYS)
def test_always_refused_across_the_whole_range(kind: str, net: str, outside: str | None) -> None:
    for addr in _inside(net):
        got = check_target(addr)
        assert RailViolation(kind, f"{ipaddress.ip_network(addr)} overlaps {net}") in got, addr
    if outside is not None:
        assert check_target(outside) == []


def test_allow_loopback_lifts_loopback_only() -> None:
    assert check_target("127.255.255.255", allow_loopback=True) == []
    assert check_target("::1", allow_loopback=True) == []
    assert [v.kind for v in check_target("169.254.9.9", allow_loopback=True)] == ["link-local"]


@pytest.mark.parametrize("ignored", ["10.0.0.0/8", "2001:db8::/32"])
def test_protected_network_refused_at_every_address_and_nothing_else(ignored: str) -> None:
    net = ipaddress.ip_network(ignored)
    other_family = ipaddress.ip_network("2001:db8::/32" if net.version == 4 else "10.0.0.0/8")
    for addr in _inside(ignored):
        got = check_target(addr, protect=[net, other_family])
        assert got == [
            RailViolation("protected", f"{ipaddress.ip_network(addr)} overlaps protected/ignored {net}")
        ]
    outside = "11.0.0.1" if net.version == 4 else "2001:db9::1"
    assert check_target(outside, protect=[net, other_family]) == []
    # an allowed address of the other family is not refused by this one
    assert check_target("192.0.2.7" if net.version == 6 else "2001:db9::7", protect=[net]) == []


def test_a_network_overlapping_a_protected_one_either_way_is_refused() -> None:
    protect = [ipaddress.ip_network("10.1.2.0/28")]
    assert [v.kind for v in check_target("10.1.2.0/24", protect=protect)] == ["protected"]
    assert [v.kind for v in check_target("10.1.2.8/30", protect=protect)] == ["protected"]
    assert check_target("10.1.3.0/24", protect=protect) == []


def test_refusal_words_name_the_target_and_the_rule() -> None:
    assert check_target("0.0.0.0/0") == [RailViolation("too-wide", "0.0.0.0/0 is every address")]
    assert check_target("::/0") == [RailViolation("too-wide", "::/0 is every address")]
    wide = check_target("128.0.0.0/1")  # not "every address": the minimum prefix, then each overlap
    assert wide[0] == RailViolation("too-wide", "128.0.0.0/1 is wider than /24 (enforcer.min_prefix_v4)")
    assert [v.kind for v in wide[1:]] == ["link-local", "multicast", "multicast"]
    assert check_target("2001:db8::/32") == [
        RailViolation("too-wide", "2001:db8::/32 is wider than /48 (enforcer.min_prefix_v6)")
    ]
    bad = check_target("10.0.0.300")
    assert [v.kind for v in bad] == ["invalid"] and "10.0.0.300" in bad[0].detail
    assert str(bad[0]).startswith("invalid: ")


def test_host_bits_of_a_network_are_ignored() -> None:
    assert check_target("203.0.113.9/24") == []
    assert check_target("203.0.113.9/23") == [
        RailViolation("too-wide", "203.0.112.0/23 is wider than /24 (enforcer.min_prefix_v4)")
    ]


def test_build_keeps_every_operator_setting() -> None:
    settings = EnforcerSettings(
        min_prefix_v4=16,
        min_prefix_v6=32,
        max_bans=10,
        alarm_ratio=0.5,
        allow_loopback=True,
        protect=["192.0.2.0/24"],
    )
    jails = [JailSettings(name="amps", ignoreip=["198.51.100.0/24"]), JailSettings(name="other")]
    rails = Rails.build(settings, jails, own=["203.0.113.1", "not an address"], brokers=["2001:db8::9"])
    assert (rails.min_prefix_v4, rails.min_prefix_v6, rails.max_bans, rails.alarm_ratio) == (16, 32, 10, 0.5)
    assert rails.alarm_at == 5
    # what the settings change in a verdict
    assert rails.refusal("amps", "10.1.0.0/16") is None  # a /16 is allowed with min_prefix_v4 16
    assert rails.refusal("amps", "10.0.0.0/15") is not None
    assert rails.refusal("amps", "2001:db9::/32") is None
    assert rails.refusal("amps", "2001:db9::/31") is not None
    assert rails.refusal("amps", "127.0.0.5") is None  # allow_loopback
    assert (
        rails.refusal("amps", "198.51.100.77")
        == "protected: 198.51.100.77/32 overlaps protected/ignored 198.51.100.0/24"
    )
    assert rails.refusal("other", "198.51.100.77") is None  # ignoreip is per jail
    for target in ("192.0.2.200", "203.0.113.1", "2001:db8::9"):
        assert rails.refusal("other", target) is not None, target


def test_alarm_at_is_the_ratio_of_the_cap_at_least_one() -> None:
    assert Rails(max_bans=100, alarm_ratio=0.8).alarm_at == 80
    assert Rails(max_bans=7, alarm_ratio=0.5).alarm_at == 3
    assert Rails(max_bans=1, alarm_ratio=0.1).alarm_at == 1


def test_refusal_memo_and_fast_path_agree_with_the_full_check() -> None:
    rails = Rails(ignore={"amps": (ipaddress.ip_network("10.9.0.0/16"),)})
    for target in ("10.9.255.255", "10.10.0.1", "224.1.1.1", "::ffff:10.9.0.1", "10.9.0.0/24"):
        first = rails.refusal("amps", target)
        assert rails.refusal("amps", target) == first  # memoised, same answer
    assert rails.refusal("amps", "10.10.0.1") is None
    assert rails.refusal("amps", "10.9.255.255") is not None
    assert rails.refusal(
        "amps",
        "::ffff:10.9.0.1",
    ).startswith("invalid: ")  # type: ignore[union-attr]


@pytest.mark.parametrize("target", ["\x00", "1.2.3.4\x00", "\x00::1", "1.2.3.4\n", " 1.2.3.4"])
def test_a_hostile_target_is_refused_never_raises(target: str) -> None:
    # the fast path for plain IPv4 asked inet_pton, which raises ValueError on an embedded NUL: one such
    # record made every reconcile fail (found by tests/fuzz)
    rails = Rails.build(EnforcerSettings(host="x"), [JailSettings()])
    assert rails.refusal("amps", target) is not None
