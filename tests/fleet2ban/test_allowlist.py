"""The allow-list's pure core: the wire record, matching, expiry by clock, operators' entries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from fleet2ban.allowlist import AllowList, entry_text, new_entry
from fleet2ban.contract import (
    AllowEntry,
    ContractError,
    allow_decision,
    allow_key,
    decode_allow,
    decode_decision,
    encode,
    split_allow_key,
)
from fleet2ban.exceptions import ConfigError

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
JAILS = ["amps", "short"]


def entry(network: str, jail: str = "*", ttl: float | None = None, by: str = "alice") -> AllowEntry:
    return AllowEntry(
        id=f"al-{network}",
        network=network,
        at=T0,
        jail=jail,
        expires_at=None if ttl is None else T0 + timedelta(seconds=ttl),
        by=by,
        reason="partner office",
    )


def test_record_round_trips_and_its_audit_record_decodes() -> None:
    e = entry("198.51.100.0/24", ttl=3600)
    assert decode_allow(encode(e)) == e
    assert split_allow_key(allow_key("*", "198.51.100.0/24")) == ("*", "198.51.100.0/24")
    d = decode_decision(encode(allow_decision(e, "allow")))
    assert (d.action, d.ip, d.jail, d.expires_at, d.by, d.origin) == (
        "allow",
        "198.51.100.0/24",
        "*",
        e.expires_at,
        "alice",
        "manual",
    )
    # "*" is a jail only for allow-list audit records: a ban in jail "*" is still refused
    with pytest.raises(ContractError):
        decode_decision(encode(msgspec.structs.replace(allow_decision(e, "allow"), action="ban")))


@pytest.mark.parametrize(
    "key",
    [b"", b"198.51.100.0/24", b"bad jail|198.51.100.0/24", b"*|198.51.100.1/24", b"*|not-an-ip"],
)
def test_bad_keys_are_refused(key: bytes) -> None:
    with pytest.raises(ContractError):
        AllowList().ingest(key, None)


def test_a_value_under_another_key_is_refused() -> None:
    allow = AllowList()
    with pytest.raises(ContractError):
        allow.ingest(b"*|198.51.100.9", encode(entry("198.51.100.0/24")))
    assert not allow.entries


@pytest.mark.parametrize("network", ["0.0.0.0/0", "0.0.0.0/1", "::/0", "2000::/3"])
def test_an_entry_exempting_most_addresses_is_refused_on_the_topic_too(network: str) -> None:
    """A writer that skips new_entry's checks (another tool with the operator's ACL) cannot switch
    banning off for every reader: the decoder refuses the entry and the list stays empty (issue 20)."""
    allow = AllowList()
    with pytest.raises(ContractError, match="half or more"):
        allow.ingest(allow_key("*", network).encode(), encode(entry(network)))
    assert not allow.entries and allow.match("amps", "203.0.113.9", T0) is None


def test_match_covers_overlaps_per_jail_until_expiry_and_tombstone_removes() -> None:
    allow = AllowList()
    allow.ingest(b"*|198.51.100.0/24", encode(entry("198.51.100.0/24", ttl=60)))
    allow.ingest(b"short|2001:db8::/48", encode(entry("2001:db8::/48", jail="short")))
    assert allow.match("amps", "198.51.100.7", T0) is not None
    assert allow.match("amps", "198.51.0.0/16", T0) is not None  # a wider ban would block it too
    assert allow.match("amps", "198.51.101.7", T0) is None
    assert allow.match("short", "2001:db8::/64", T0) is not None
    assert allow.match("amps", "2001:db8::/64", T0) is None  # only in jail short
    # expiry by the asker's clock: nobody has to act
    assert allow.next_expiry(T0) == T0 + timedelta(seconds=60)
    assert allow.match("amps", "198.51.100.7", T0 + timedelta(seconds=60)) is None
    assert [e.network for e in allow.active(T0 + timedelta(seconds=61))] == ["2001:db8::/48"]
    version = allow.version
    allow.ingest(b"short|2001:db8::/48", None)
    assert allow.match("short", "2001:db8::/64", T0) is None and allow.version > version


def test_new_entry_checks_and_records_author() -> None:
    e = new_entry(
        "::ffff:198.51.100.7",
        jail=None,
        ttl=timedelta(hours=2),
        reason=" vpn ",
        by="bob",
        now=T0,
        jails=JAILS,
    )
    assert (e.network, e.jail, e.expires_at, e.by, e.reason) == (
        "198.51.100.7",
        "*",
        T0 + timedelta(hours=2),
        "bob",
        "vpn",
    )
    assert "198.51.100.7 (every jail) by bob: vpn" in entry_text(e)
    assert (
        new_entry("10.0.0.0/8", jail="amps", ttl=None, reason=None, by="b", now=T0, jails=JAILS).jail
        == "amps"
    )
    for kwargs in (
        {"network": "0.0.0.0/0"},
        {"network": "0.0.0.0/1"},  # half of IPv4: with 128.0.0.0/1, banning off (issue 20)
        {"network": "2000::/4"},  # half of IPv6's global unicast
        {"network": "10.0.0.1%eth0"},
        {"jail": "nope"},
        {"ttl": timedelta(0)},
        {"by": " "},
    ):
        args = {"network": "10.0.0.1", "jail": None, "ttl": None, "reason": None, "by": "b", **kwargs}
        with pytest.raises(ConfigError):
            new_entry(args.pop("network"), now=T0, jails=JAILS, **args)  # type: ignore[arg-type]
