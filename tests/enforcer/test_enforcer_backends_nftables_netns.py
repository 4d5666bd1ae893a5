"""The nftables backend and ``backend: auto`` in a network namespace, proven with real TCP connections.

Also, without a kernel: the JSON shapes the backend reads and writes, ``auto``'s decision table, and
that the ipset backend's small commits no longer fork ``ipset``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from enforcer_helpers import OTHER_PORT, PORT, FwFleet, fw, wait_for

from enforcer.backends import make_backend
from enforcer.backends.auto import Evidence, decide
from enforcer.backends.libnft import clean_error
from enforcer.backends.nftables import NftablesBackend, element_value, parse_element
from enforcer.core import Enforcer
from enforcer.plan import Add, Delete, JailSpec, Rails
from fleet2ban.contract import BanState, ban_key, encode, utcnow
from fleet2ban.dev.netns import try_connect
from fleet2ban.settings import EnforcerSettings, JailSettings

__all__ = ["fw"]

JAILS = [JailSpec("amps", (PORT,))]
FLEET2BAN = str(Path(sys.executable).with_name("fleet2ban"))
PREFIX_NET = "fd00:64:1:2::/64"
PREFIX_ADDR = "fd00:64:1:2::66"
FOREIGN = """
table inet foreign {
    set allowed { type ipv4_addr; elements = { 192.0.2.7 } }
    chain input {
        type filter hook input priority 0; policy accept;
        ip saddr @allowed accept
        tcp dport 9008 drop
        tcp dport 9007 accept
    }
}
"""


# ------------------------------------------------------------------------------------ no kernel


def test_element_shapes_round_trip() -> None:
    assert element_value("203.0.113.9") == "203.0.113.9"
    assert element_value("2001:db8::/64") == {"prefix": {"addr": "2001:db8::", "len": 64}}
    assert parse_element("203.0.113.9") == ("203.0.113.9", "203.0.113.9", None)
    item = {"elem": {"val": {"prefix": {"addr": "10.1.0.0", "len": 24}}, "timeout": 60, "expires": 41}}
    assert parse_element(item)[1:] == ("10.1.0.0/24", 41)
    assert parse_element({"range": ["10.0.0.1", "10.0.0.5"]})[1] is None  # never ours


def test_clean_error_keeps_the_message_only() -> None:
    text = "internal:0:0-0: Error: interval overlaps with an existing one\n\n"
    assert clean_error(text) == "interval overlaps with an existing one"
    echoed = 'Error: syntax error, unexpected junk\n{"nftables": [{"add": ...}]}\n          ^^^^^\n'
    assert clean_error(echoed) == "syntax error, unexpected junk"  # not the echo of the whole command


def test_batch_merges_per_set_and_keeps_renewal_order() -> None:
    b = NftablesBackend(JAILS, EnforcerSettings())
    changes: list[Add | Delete] = [
        Delete("amps", "192.0.2.3", 4),
        Delete("amps", "2001:db8::/64", 6),
        Add("amps", "192.0.2.1", 4, 60),
        Add("amps", "192.0.2.2", 4, 90, renew=True),
    ]
    assert b._set_for_cached("amps", "2001:db8::/64") == "f2b-amps-6-nets"
    batch = b._batch(changes)
    steps = [
        (verb, body["element"]["name"], body["element"]["elem"]) for c in batch for verb, body in c.items()
    ]
    prefix = {"prefix": {"addr": "2001:db8::", "len": 64}}
    # made present (what is removed or renewed), deleted, then every add with its timeout
    assert steps == [
        ("add", "f2b-amps-4", ["192.0.2.3", "192.0.2.2"]),
        ("add", "f2b-amps-6-nets", [prefix]),
        ("delete", "f2b-amps-4", ["192.0.2.3", "192.0.2.2"]),
        ("delete", "f2b-amps-6-nets", [prefix]),
        (
            "add",
            "f2b-amps-4",
            [{"elem": {"val": "192.0.2.1", "timeout": 60}}, {"elem": {"val": "192.0.2.2", "timeout": 90}}],
        ),
    ]


def evidence(**kw: Any) -> Evidence:
    base: dict[str, Any] = {
        "nft_error": None,
        "nft_rules": 0,
        "nft_tables": [],
        "legacy_rules": 0,
        "ours_in_legacy": False,
        "variant": "nf_tables",
    }
    return Evidence(**{**base, **kw})


@pytest.mark.parametrize(
    ("kw", "name", "words"),
    [
        ({"nft_error": "no libnftables"}, "ipset", "nftables cannot be used"),
        ({"legacy_rules": 12}, "ipset", "legacy x_tables (12 rules"),
        (
            {"nft_rules": 3, "nft_tables": ["ip filter"], "legacy_rules": 2},
            "nftables",
            "is nftables (3 rules",
        ),
        ({}, "nftables", "iptables-nft"),
        ({"variant": "legacy"}, "ipset", "iptables-legacy"),
        ({"variant": "missing"}, "nftables", "no `iptables` command"),
        ({"nft_error": "no CAP_NET_ADMIN to read the firewall", "variant": "legacy"}, "ipset", "cannot read"),
        ({"ours_in_legacy": True}, "nftables", "--backend ipset --uninstall"),
    ],
)
def test_auto_decision_table(kw: dict[str, Any], name: str, words: str) -> None:
    choice = decide(evidence(**kw))
    assert choice.name == name and words in choice.reason, choice


# ------------------------------------------------------------------------------------ namespaces


def nft(fw: FwFleet, *args: str, input: str | None = None, check: bool = True) -> str:
    out = fw.h1.run(["nft", *args], capture_output=True, text=True, input=input, check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"nft {' '.join(args)}: {out.stderr}")
    return str(out.stdout)


def foreign_table(fw: FwFleet) -> Any:
    """The foreign table as nft lists it, without handles (which a re-listing keeps anyway)."""
    doc = json.loads(nft(fw, "-j", "list", "table", "inet", "foreign"))
    objs = [o for o in doc["nftables"] if "metainfo" not in o]
    for o in objs:
        next(iter(o.values())).pop("handle", None)
    return objs


@pytest.fixture
def nftb(fw: FwFleet) -> Iterator[NftablesBackend]:
    b = NftablesBackend(JAILS, EnforcerSettings(target="REJECT"))
    with fw.h1.entered():
        b.check()
        b.ensure()
    yield b
    with fw.h1.entered():
        b.uninstall()
    nft(fw, "delete", "table", "inet", "foreign", check=False)


@pytest.mark.netns
@pytest.mark.parametrize("family", [4, 6])
def test_nft_ban_blocks_only_the_banned_address_on_the_jail_port(
    nftb: NftablesBackend, fw: FwFleet, family: int
) -> None:
    target = fw.att.addr(family)
    assert fw.connects(fw.att, family)
    with fw.h1.entered():
        nftb.add(Add("amps", target, family, 30))
        assert nftb.commit() == []
        assert set(nftb.list()) == {("amps", target)}
    assert fw.blocked(fw.att, family)
    assert fw.connects(fw.leg, family)  # another address still connects
    assert fw.connects(fw.att, family, OTHER_PORT)  # other ports stay open
    assert fw.connects(fw.att, 10 - family)  # the other family of the same host is not banned
    listing = nft(fw, "list", "table", "inet", "fleet2ban")
    saddr = "ip saddr" if family == 4 else "ip6 saddr"
    assert f"tcp dport 9007 {saddr} @f2b-amps-{family} reject with tcp reset" in listing
    assert "hook input priority filter - 10; policy accept;" in listing
    assert target in nft(fw, "list", "set", "inet", "fleet2ban", f"f2b-amps-{family}")
    with fw.h1.entered():
        nftb.delete(Delete("amps", target, family))
        assert nftb.commit() == []
        assert nftb.list() == {}
    assert fw.connects(fw.att, family)


def connect_from(fw: FwFleet, src: str, port: int = PORT) -> str | None:
    """Connect from att, bound to ``src``, to h1's IPv6 address: None when it connected, else why not."""
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET6); s.settimeout(2); s.bind((sys.argv[1],0))\n"
        "try:\n s.connect((sys.argv[2],int(sys.argv[3]))); print('ok')\n"
        "except ConnectionRefusedError: print('refused')\n"
        "except OSError as e: print(e)\n"
    )
    out = fw.att.run([sys.executable, "-c", code, src, fw.h1.ipv6, str(port)], capture_output=True, text=True)
    answer = out.stdout.strip()
    return None if answer == "ok" else answer or out.stderr.strip()


@pytest.fixture
def prefix_route(fw: FwFleet) -> Iterator[None]:
    """att also holds an address in another /64, which h1 reaches on the bridge."""
    fw.att.run(["ip", "-6", "addr", "add", f"{PREFIX_ADDR}/128", "dev", "eth0", "nodad"], check=True)
    fw.h1.run(["ip", "-6", "route", "add", PREFIX_NET, "dev", "eth0"], check=True)
    yield
    fw.h1.run(["ip", "-6", "route", "del", PREFIX_NET, "dev", "eth0"], check=False)
    fw.att.run(["ip", "-6", "addr", "del", f"{PREFIX_ADDR}/128", "dev", "eth0"], check=False)


@pytest.mark.netns
def test_nft_prefix_ban_and_an_address_inside_it(
    nftb: NftablesBackend, fw: FwFleet, prefix_route: None
) -> None:
    assert wait_for(lambda: connect_from(fw, PREFIX_ADDR) is None, 5, "the extra address to connect")
    with fw.h1.entered():
        nftb.add(Add("amps", PREFIX_NET, 6, 60))
        nftb.add(Add("amps", PREFIX_ADDR, 6, 60))  # inside the /64: both are held (two sets)
        assert nftb.commit() == []
        assert set(nftb.list()) == {("amps", PREFIX_NET), ("amps", PREFIX_ADDR)}
    assert connect_from(fw, PREFIX_ADDR) == "refused"
    assert connect_from(fw, PREFIX_ADDR, OTHER_PORT) is None
    assert fw.connects(fw.att, 6)  # att's own /64 is another prefix
    with fw.h1.entered():
        nftb.delete(Delete("amps", PREFIX_ADDR, 6))
        # a prefix nested in a banned prefix is refused by the interval set, alone: the rest applies
        nftb.add(Add("amps", "fd00:64:1:2:8000::/65", 6, 60))
        nftb.add(Add("amps", "203.0.113.77", 4, 60))
        failures = nftb.commit()
        assert [(f.target, "overlaps" in f.error) for f in failures] == [("fd00:64:1:2:8000::/65", True)]
        assert set(nftb.list()) == {("amps", PREFIX_NET), ("amps", "203.0.113.77")}
    assert connect_from(fw, PREFIX_ADDR) == "refused"  # still inside the banned /64
    with fw.h1.entered():
        nftb.delete(Delete("amps", PREFIX_NET, 6))
        assert nftb.commit() == []
    assert connect_from(fw, PREFIX_ADDR) is None


@pytest.mark.netns
@pytest.mark.parametrize("family", [4, 6])
def test_nft_entry_expires_in_the_kernel(fw: FwFleet, family: int) -> None:
    b = NftablesBackend(JAILS, EnforcerSettings(target="DROP"))
    try:
        with fw.h1.entered():
            b.ensure()
            b.add(Add("amps", fw.att.addr(family), family, 2))
            assert b.commit() == []
        assert fw.dropped(fw.att, family)  # DROP: the connect times out
        wait_for(
            lambda: fw.connects(fw.att, family, attempts=1),
            timeout=8,
            what="the kernel to expire the element",
        )
        with fw.h1.entered():
            assert b.list() == {}
    finally:
        with fw.h1.entered():
            b.uninstall()


@pytest.mark.netns
def test_nft_readd_renews_the_timeout(nftb: NftablesBackend, fw: FwFleet) -> None:
    with fw.h1.entered():
        nftb.add(Add("amps", "203.0.113.9", 4, 5))
        nftb.add(Add("amps", "2001:db8::9", 6, 5))
        assert nftb.commit() == []
        nftb.add(Add("amps", "203.0.113.9", 4, 500, renew=True))
        nftb.add(Add("amps", "2001:db8::9", 6, None, renew=True))
        nftb.delete(Delete("amps", "198.51.100.1", 4))  # not there: not an error
        assert nftb.commit() == []
        listed = nftb.list()
    assert listed[("amps", "203.0.113.9")].timeout in range(495, 501)
    assert listed[("amps", "2001:db8::9")].timeout is None


def enforcer_for(backend: NftablesBackend, *ips: str) -> Enforcer:
    rails = Rails.build(EnforcerSettings(), [JailSettings()], own=["10.231.0.1"])
    e = Enforcer(backend, rails, JAILS, "h1")
    now = utcnow()
    for ip in ips:
        ban = BanState(
            decision_id=f"b-{ip}", ip=ip, jail="amps", at=now, expires_at=now + timedelta(seconds=60)
        )
        e.ingest(ban_key("amps", ip).encode(), encode(ban))
    return e


@pytest.mark.netns
@pytest.mark.parametrize("damage", [["flush", "ruleset"], ["delete", "table", "inet", "fleet2ban"]])
def test_nft_reconcile_restores_after_flush_or_deleted_table(
    nftb: NftablesBackend, fw: FwFleet, damage: list[str]
) -> None:
    e = enforcer_for(nftb, fw.att.ipv4, fw.att.ipv6)
    with fw.h1.entered():
        e.reconcile(full=True)
    assert fw.blocked(fw.att, 4) and fw.blocked(fw.att, 6)
    nft(fw, *damage)
    assert fw.connects(fw.att, 4)
    with fw.h1.entered():
        e.reconcile(full=True)
        assert e.counters["corrections_structure"] >= 1 and e.counters["corrections_missing"] == 2
        assert nftb.ensure() == 0  # repaired: nothing more to do
    assert fw.blocked(fw.att, 4) and fw.blocked(fw.att, 6)
    assert fw.connects(fw.leg, 4)


@pytest.mark.netns
@pytest.mark.parametrize(
    "damage", [["flush", "ruleset"], ["delete", "set", "inet", "fleet2ban", "f2b-amps-6-nets"]]
)
def test_nft_commit_puts_damaged_structure_back_at_once(
    nftb: NftablesBackend, fw: FwFleet, damage: list[str]
) -> None:
    if damage[1] == "set":
        nft(fw, "flush", "chain", "inet", "fleet2ban", "f2b-amps")  # a set in use cannot be deleted
    nft(fw, *damage)
    with fw.h1.entered():
        nftb.add(Add("amps", fw.att.ipv4, 4, 60))
        nftb.add(Add("amps", "2001:db8:5::/64", 6, 60))
        assert nftb.commit() == []  # not "failed until the next full reconcile"
        assert set(nftb.list()) == {("amps", fw.att.ipv4), ("amps", "2001:db8:5::/64")}
        assert nftb.ensure() == 0
    assert fw.blocked(fw.att, 4)


@pytest.mark.netns
def test_nft_ensure_resets_foreign_rules_and_sets_in_our_table(nftb: NftablesBackend, fw: FwFleet) -> None:
    nft(fw, "add", "rule", "inet", "fleet2ban", "f2b-amps", "tcp", "dport", "9008", "drop")
    nft(fw, "add", "set", "inet", "fleet2ban", "extra", "{ type ipv4_addr; }")
    nft(fw, "add", "element", "inet", "fleet2ban", "f2b-amps-4-nets", "{ 198.51.100.0-198.51.100.9 }")
    assert fw.connects(fw.att, 4, OTHER_PORT, attempts=1) is False
    with fw.h1.entered():
        assert nftb.ensure() >= 3
        assert nftb.ensure() == 0
        assert nftb.list() == {}
    assert "extra" not in nft(fw, "list", "table", "inet", "fleet2ban")
    assert fw.connects(fw.att, 4, OTHER_PORT)


@pytest.mark.netns
def test_nft_coexists_with_a_foreign_table_filtering_input(nftb: NftablesBackend, fw: FwFleet) -> None:
    nft(fw, "-f", "-", input=FOREIGN)
    before = foreign_table(fw)
    assert try_connect(fw.leg.ns, fw.h1.ipv4, OTHER_PORT, timeout=0.5) == "timeout"  # theirs: 9008 dropped
    with fw.h1.entered():
        nftb.ensure()
        nftb.add(Add("amps", fw.att.ipv4, 4, 60))
        assert nftb.commit() == []
    # their chain accepts 9007 at priority 0; our drop at -10 is final all the same
    assert fw.blocked(fw.att, 4)
    assert fw.connects(fw.leg, 4)
    with fw.h1.entered():
        nftb.ensure()
        nftb.list()
        nftb.uninstall()
    assert foreign_table(fw) == before
    assert fw.connects(fw.att, 4)


@pytest.mark.netns
def test_nft_uninstall_leaves_nothing(nftb: NftablesBackend, fw: FwFleet) -> None:
    with fw.h1.entered():
        nftb.add(Add("amps", fw.att.ipv6, 6, 60))
        nftb.commit()
        assert nftb.uninstall() == ["table inet fleet2ban (its chains and sets)"]
        assert nftb.uninstall() == []
    assert nft(fw, "list", "ruleset").strip() == ""
    assert fw.connects(fw.att, 6)


@pytest.mark.netns
def test_cli_uninstall_and_show_with_nftables(nftb: NftablesBackend, fw: FwFleet) -> None:
    with fw.h1.entered():
        nftb.add(Add("amps", "203.0.113.5", 4, 60))
        nftb.commit()
    show = fw.h1.run(
        [FLEET2BAN, "enforcer", "--backend", "nftables", "--show"], capture_output=True, text=True
    )
    assert show.returncode == 0, show.stderr
    assert "table inet fleet2ban" in show.stdout and "203.0.113.5" in show.stdout
    out = fw.h1.run(
        [FLEET2BAN, "enforcer", "--backend", "nftables", "--uninstall"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "removed table inet fleet2ban" in out.stdout, out
    assert nft(fw, "list", "ruleset").strip() == ""


@pytest.mark.netns
def test_auto_uninstall_removes_what_either_backend_owns(fw: FwFleet) -> None:
    """A host moved from ipset to nftables: auto says the old chains still filter, --uninstall removes both."""
    nb = NftablesBackend(JAILS, EnforcerSettings())
    ib = make_backend("ipset", JAILS, EnforcerSettings())
    with fw.h1.entered():
        nb.ensure()
        ib.check()
        ib.ensure()
        ib.add(Add("amps", "203.0.113.6", 4, 60))
        assert ib.commit() == []
    try:
        first = auto_show(fw).splitlines()[0]
        assert first.startswith("enforcer.backend auto picked nftables")
        assert "still in x_tables" in first and "--backend ipset --uninstall" in first
        out = fw.h1.run([FLEET2BAN, "enforcer", "--uninstall"], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert "removed table inet fleet2ban" in out.stdout and "removed set f2b-amps-4" in out.stdout
        assert nft(fw, "list", "ruleset").strip() == ""
        assert "f2b-amps" not in fw.legacy(4, "-S") and "f2b-amps" not in fw.ipset("list", "-n").stdout
    finally:
        with fw.h1.entered():
            ib.uninstall()
            nb.uninstall()


def auto_show(fw: FwFleet) -> str:
    out = fw.h1.run([FLEET2BAN, "enforcer", "--backend", "auto", "--show"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return str(out.stdout)


@pytest.mark.netns
def test_auto_picks_nftables_where_the_firewall_is_nftables(fw: FwFleet) -> None:
    nft(fw, "-f", "-", input=FOREIGN)
    try:
        with fw.h1.entered():
            b = make_backend("auto", JAILS, EnforcerSettings())
        assert b.name == "nftables"
        assert (
            b.auto_reason is not None
            and "firewall is nftables (3 rules in tables inet foreign)" in b.auto_reason
        )
        first = auto_show(fw).splitlines()[0]
        assert first.startswith("enforcer.backend auto picked nftables: this host's firewall is nftables")
    finally:
        nft(fw, "delete", "table", "inet", "foreign", check=False)


@pytest.mark.netns
def test_auto_picks_ipset_where_the_firewall_is_legacy(fw: FwFleet) -> None:
    assert nft(fw, "list", "ruleset").strip() == ""
    rule = ["INPUT", "-s", "192.0.2.1", "-j", "ACCEPT"]
    fw.h1.run(["iptables-legacy", "-w", "-A", *rule], check=True)
    try:
        first = auto_show(fw).splitlines()[0]
        assert first.startswith(
            "enforcer.backend auto picked ipset: this host's firewall is legacy x_tables (1 rules"
        )
    finally:
        fw.h1.run(["iptables-legacy", "-w", "-D", *rule], check=True)


@pytest.mark.netns
def test_ipset_small_commits_do_not_fork(fw: FwFleet, monkeypatch: pytest.MonkeyPatch) -> None:
    b = make_backend("ipset", JAILS, EnforcerSettings(target="REJECT"))
    with fw.h1.entered():
        b.check()
        b.ensure()
    try:

        def no_fork(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"forked {args[0]}")

        monkeypatch.setattr(subprocess, "run", no_fork)
        with fw.h1.entered():
            b.add(Add("amps", fw.att.ipv4, 4, 30))
            b.add(Add("amps", "2001:db8::/64", 6, None))
            assert b.commit() == []
            b.add(Add("amps", fw.att.ipv4, 4, 300, renew=True))
            b.delete(Delete("amps", "2001:db8::/64", 6))
            b.delete(Delete("amps", "198.51.100.1", 4))  # not there: not an error (-exist)
            assert b.commit() == []
            b.add(Add("amps", "198.51.100.2", 6, 30))  # an IPv4 address for the IPv6 set: refused alone
            b.add(Add("amps", "198.51.100.3", 4, 30))
            failures = b.commit()
            assert [f.target for f in failures] == ["198.51.100.2"] and failures[0].error.startswith("ipset:")
            b.delete(Delete("amps", "198.51.100.3", 4))
            assert b.commit() == []
        monkeypatch.undo()
        assert fw.blocked(fw.att, 4)
        with fw.h1.entered():
            listed = b.list()
        assert set(listed) == {("amps", fw.att.ipv4)}
        assert listed[("amps", fw.att.ipv4)].timeout in range(295, 301)
    finally:
        monkeypatch.undo()
        with fw.h1.entered():
            b.uninstall()


@pytest.mark.netns
def test_auto_and_nftables_without_cap_net_admin_say_what_is_missing(fw: FwFleet) -> None:
    if not shutil.which("setpriv"):
        pytest.skip("needs setpriv (util-linux) to drop CAP_NET_ADMIN")
    drop = ["setpriv", "--bounding-set", "-net_admin", "--inh-caps", "-net_admin", "--"]
    for backend in ("auto", "nftables"):
        argv = [*drop, FLEET2BAN, "enforcer", "--show", "--backend", backend]
        out = fw.h1.run(argv, capture_output=True, text=True)
        assert out.returncode == 2, out
        assert "needs CAP_NET_ADMIN" in out.stderr and "Traceback" not in out.stderr
