"""The real backends in a network namespace, proven with real TCP connections (IPv4 and IPv6)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from enforcer_helpers import OTHER_PORT, FwFleet, fw, wait_for

from enforcer.backends import Backend, make_backend
from enforcer.backends.ipset import parse_header, parse_save
from enforcer.backends.iptables import rule_target
from enforcer.plan import Add, Delete, JailSpec
from fleet2ban.settings import EnforcerSettings

__all__ = ["fw"]

JAILS = [JailSpec("amps", (9007,))]


@pytest.fixture(params=["ipset", "iptables"])
def backend(request: pytest.FixtureRequest, fw: FwFleet) -> Iterator[Backend]:
    b = make_backend(request.param, JAILS, EnforcerSettings(target="REJECT"))
    with fw.h1.entered():
        b.check()
        b.ensure()
    yield b
    with fw.h1.entered():
        b.uninstall()


def test_rule_target_parses_iptc_sources() -> None:
    assert rule_target("10.0.0.1/255.255.255.255") == "10.0.0.1"
    assert rule_target("10.0.0.0/255.255.255.0") == "10.0.0.0/24"
    assert rule_target("fd00::1/ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff") == "fd00::1"
    assert rule_target("0.0.0.0/0.0.0.0") is None


def test_parse_ipset_listings() -> None:
    text = "create s hash:net family inet\nadd s 10.0.0.1 timeout 49\nadd s 10.0.1.0/24 timeout 0\n"
    assert parse_save(text, "s") == {"10.0.0.1": 49, "10.0.1.0/24": None}
    head = parse_header(
        "Name: s\nType: hash:net\nRevision: 7\nHeader: family inet6 hashsize 1024 maxelem 2048 timeout 0\n"
        "Size in memory: 1\nReferences: 1\nNumber of entries: 3\n"
    )
    assert head is not None and (head.type, head.family, head.maxelem, head.entries) == (
        "hash:net",
        "inet6",
        2048,
        3,
    )


@pytest.mark.netns
@pytest.mark.parametrize("family", [4, 6])
def test_ban_blocks_only_the_banned_address_on_the_jail_port(
    backend: Backend, fw: FwFleet, family: int
) -> None:
    target = fw.att.addr(family)
    assert fw.connects(fw.att, family)
    with fw.h1.entered():
        backend.add(Add("amps", target, family, 30))
        assert backend.commit() == []
        assert set(backend.list()) == {("amps", target)}
    assert fw.blocked(fw.att, family)
    assert fw.connects(fw.leg, family)  # another address still connects
    assert fw.connects(fw.att, family, OTHER_PORT)  # other ports stay open
    assert fw.connects(fw.att, 10 - family)  # the other family of the same host is not banned
    rules = fw.legacy(family, "-S")
    assert "-A INPUT -p tcp -m multiport --dports 9007 -j f2b-amps" in rules
    if backend.name == "iptables":
        assert (
            f"-A f2b-amps -s {target}/{32 if family == 4 else 128} -p tcp -j REJECT --reject-with tcp-reset"
            in rules
        )
    else:
        assert f"-A f2b-amps -p tcp -m set --match-set f2b-amps-{family} src -j REJECT" in rules
        assert target in fw.ipset("list", f"f2b-amps-{family}").stdout
    with fw.h1.entered():
        backend.delete(Delete("amps", target, family))
        assert backend.commit() == []
        assert backend.list() == {}
    assert fw.connects(fw.att, family)


@pytest.mark.netns
@pytest.mark.parametrize("family", [4, 6])
def test_ipset_entry_expires_in_the_kernel(fw: FwFleet, family: int) -> None:
    b = make_backend("ipset", JAILS, EnforcerSettings(target="DROP"))
    try:
        with fw.h1.entered():
            b.ensure()
            b.add(Add("amps", fw.att.addr(family), family, 2))
            assert b.commit() == []
        assert fw.dropped(fw.att, family)  # DROP: the connect times out
        wait_for(
            lambda: fw.connects(fw.att, family, attempts=1), timeout=8, what="the kernel to expire the entry"
        )
        assert f"f2b-amps-{family}" in fw.ipset("list", "-n").stdout
        assert "Number of entries: 0" in fw.ipset("list", "-t", f"f2b-amps-{family}").stdout
    finally:
        with fw.h1.entered():
            b.uninstall()


@pytest.mark.netns
def test_ipset_readd_renews_the_timeout(fw: FwFleet) -> None:
    b = make_backend("ipset", JAILS, EnforcerSettings())
    try:
        with fw.h1.entered():
            b.ensure()
            b.add(Add("amps", "203.0.113.9", 4, 5))
            b.commit()
            b.add(Add("amps", "203.0.113.9", 4, 500, renew=True))
            b.add(Add("amps", "2001:db8::9", 6, None))
            assert b.commit() == []
            listed = b.list()
        assert listed[("amps", "203.0.113.9")].timeout in range(495, 501)
        assert listed[("amps", "2001:db8::9")].timeout is None
    finally:
        with fw.h1.entered():
            b.uninstall()


@pytest.mark.netns
def test_batch_of_thousands_is_one_commit(backend: Backend, fw: FwFleet) -> None:
    targets = [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(2000)]
    with fw.h1.entered():
        for t in targets:
            backend.add(Add("amps", t, 4, 300))
        assert backend.commit() == []
        assert len(backend.list()) == 2000
        for t in targets[:1000]:
            backend.delete(Delete("amps", t, 4))
        assert backend.commit() == []
        assert set(backend.list()) == {("amps", t) for t in targets[1000:]}


@pytest.mark.netns
def test_ensure_repairs_flushed_chain_stray_rule_and_missing_jump(backend: Backend, fw: FwFleet) -> None:
    with fw.h1.entered():
        backend.add(Add("amps", fw.att.ipv4, 4, 60))
        backend.commit()
    fw.h1.run(
        [
            "iptables-legacy",
            "-D",
            "INPUT",
            "-p",
            "tcp",
            "-m",
            "multiport",
            "--dports",
            "9007",
            "-j",
            "f2b-amps",
        ]
    )
    fw.h1.run(["iptables-legacy", "-A", "f2b-amps", "-s", "198.51.100.1", "-j", "ACCEPT"])
    assert fw.connects(fw.att, 4)
    with fw.h1.entered():
        assert backend.ensure() >= 2
        assert backend.ensure() == 0
    assert "198.51.100.1" not in fw.legacy(4, "-S", "f2b-amps")
    assert fw.blocked(fw.att, 4)
    fw.h1.run(["iptables-legacy", "-F", "f2b-amps"])
    with fw.h1.entered():
        backend.ensure()
        if backend.name == "iptables":  # the rules are the entries: the plan re-adds them
            assert backend.list() == {}
            backend.add(Add("amps", fw.att.ipv4, 4, 60))
            backend.commit()
    assert fw.blocked(fw.att, 4)


@pytest.mark.netns
def test_uninstall_removes_everything_owned(backend: Backend, fw: FwFleet) -> None:
    with fw.h1.entered():
        backend.add(Add("amps", fw.att.ipv6, 6, 60))
        backend.commit()
        removed = backend.uninstall()
        assert any("chain f2b-amps" in r for r in removed)
        assert backend.uninstall() == []
    for family in (4, 6):
        assert "f2b-amps" not in fw.legacy(family, "-S")
    assert "f2b-amps" not in fw.ipset("list", "-n").stdout
    assert fw.connects(fw.att, 6)
