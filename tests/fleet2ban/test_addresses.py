"""Addresses have one canonical form from the moment they enter (issue 20): the contract's one parser
refuses scope ids, inner whitespace and anything else; decoders refuse non-canonical records; the rails
judge IPv4-mapped networks as the IPv4 networks they are."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from fleet2ban import contract as c
from fleet2ban.rails import Rails, check_target
from fleet2ban.settings import EnforcerSettings, JailSettings

TS = datetime(2026, 1, 1, tzinfo=UTC)
HOSTILE = "2001:db8::1%1 timeout 5\nadd f2b-amps-4 10.0.0.1"


@pytest.mark.parametrize(
    "text",
    [
        HOSTILE,
        "fe80::1%eth0",
        "fe80::1%1",
        "10.0.0.1\nadd x 10.0.0.2",
        "10.0.0.1 10.0.0.2",
        "2001:db8::1 ",  # inner/trailing whitespace is stripped only around a valid address: see below
        "",
        "[]",
        "10.0.0.1/32",  # a network is not an address
        "1" * 100,
    ],
)
def test_normalize_ip_refuses_anything_but_an_address(text: str) -> None:
    if text == "2001:db8::1 ":
        assert c.normalize_ip(text) == "2001:db8::1"  # surrounding whitespace: canonical result
        return
    with pytest.raises(c.ContractError):
        c.normalize_ip(text)


@pytest.mark.parametrize(
    "text", [HOSTILE + "/128", "fe80::%1/64", "10.0.0.0/8 x", "10.0.0.0/+8", "10.0.0.0/08x", "10.0.0.0/"]
)
def test_normalize_target_refuses_scope_ids_and_junk(text: str) -> None:
    with pytest.raises(c.ContractError):
        c.normalize_target(text)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("::ffff:127.0.0.1/128", "127.0.0.1"),
        ("::ffff:10.0.0.1/128", "10.0.0.1"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("::ffff:0:0/96", "0.0.0.0/0"),
        ("2001:db8::/64", "2001:db8::/64"),
    ],
)
def test_ipv4_mapped_networks_are_ipv4(text: str, want: str) -> None:
    assert c.normalize_target(text) == want


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ("::ffff:127.0.0.1/128", "loopback"),
        ("::ffff:10.0.0.1/128", "protected"),
        ("::ffff:0:0/96", "too-wide"),
        ("0.0.0.1", "unspecified"),
        ("0.0.0.0/0", "too-wide"),
        ("::/0", "too-wide"),
        (HOSTILE, "invalid"),
    ],
)
def test_rails_refuse_mapped_special_and_hostile_targets(target: str, kind: str) -> None:
    import ipaddress

    kinds = [v.kind for v in check_target(target, protect=[ipaddress.ip_network("10.0.0.0/8")])]
    assert kind in kinds


def test_rails_refusal_needs_the_canonical_form() -> None:
    rails = Rails.build(EnforcerSettings(), [JailSettings()])
    assert rails.refusal("amps", "203.0.113.9") is None
    assert rails.refusal("amps", "2001:db8::1") is None
    for text in (HOSTILE, "2001:DB8::1", "::ffff:203.0.113.9", "203.0.113.0/16"):
        verdict = rails.refusal("amps", text)
        assert verdict is not None and verdict.startswith("invalid"), text


def _decision(ip: str, jail: str = "amps", ports: list[int] | None = None) -> bytes:
    d = c.Decision(
        id="mb-1", action="ban", ip="203.0.113.9", jail="amps", at=TS, ports=[9007], origin="manual"
    )
    raw = msgspec.json.decode(c.encode(d))
    raw.update(ip=ip, jail=jail, ports=ports if ports is not None else [9007])
    return msgspec.json.encode(raw)


@pytest.mark.parametrize("ip", [HOSTILE, "::ffff:203.0.113.9", "2001:DB8::1", " 203.0.113.9", "10.0.0.0/8 "])
def test_decoders_refuse_addresses_not_in_canonical_form(ip: str) -> None:
    with pytest.raises(c.ContractError):
        c.decode_decision(_decision(ip))
    ban = msgspec.json.decode(c.encode(c.BanState(decision_id="x", ip="203.0.113.9", jail="amps", at=TS)))
    ban["ip"] = ip
    with pytest.raises(c.ContractError):
        c.decode_ban(msgspec.json.encode(ban))
    line = c.Line(id="h:1:0", ts=TS, port=1, client="c", reason="auth")
    batch = msgspec.json.decode(c.encode(c.EventBatch(host="h", ip="203.0.113.9", lines=[line])))
    batch["ip"] = ip
    with pytest.raises(c.ContractError):
        c.decode_batch(msgspec.json.encode(batch))


def test_bans_keys_with_a_scope_id_are_refused() -> None:
    with pytest.raises(c.ContractError):
        c.split_ban_key(f"amps|{HOSTILE}")


@pytest.mark.parametrize(
    ("jail", "ports"), [("amps|x", [9007]), ("", [9007]), ("amps", [0]), ("amps", [70000])]
)
def test_decoders_refuse_bad_jails_and_ports(jail: str, ports: list[int]) -> None:
    with pytest.raises(c.ContractError):
        c.decode_decision(_decision("203.0.113.9", jail, ports))


def test_canonical_records_still_decode() -> None:
    assert c.decode_decision(_decision("2001:db8::/64")).ip == "2001:db8::/64"
    assert c.decode_decision(_decision("203.0.113.9")).ip == "203.0.113.9"


def test_loopback_is_refused_unless_the_dev_fleet_allows_it() -> None:
    default = Rails.build(EnforcerSettings(), [JailSettings()])
    dev = Rails.build(EnforcerSettings(allow_loopback=True), [JailSettings()])
    assert default.refusal("amps", "127.0.0.2") is not None
    assert dev.refusal("amps", "127.0.0.2") is None
    assert dev.refusal("amps", "0.0.0.0") is not None  # only loopback is relaxed


def test_an_events_line_may_have_an_unknown_port_but_not_a_bad_one() -> None:
    """A fail2ban filter without <F-PORT> ships port 0 (unknown); firewall ports are 1-65535."""
    line = c.Line(id="h:1:0", ts=TS, port=0, client="c", reason="auth")
    assert c.decode_batch(c.encode(c.EventBatch(host="h", ip="203.0.113.9", lines=[line]))).lines[0].port == 0
    bad = msgspec.json.decode(c.encode(c.EventBatch(host="h", ip="203.0.113.9", lines=[line])))
    bad["lines"][0]["port"] = 70000
    with pytest.raises(c.ContractError):
        c.decode_batch(msgspec.json.encode(bad))


def test_a_ban_expiring_near_year_9999_is_refused_on_decode() -> None:
    """Its expiry would overflow a datetime when the processor lifts it (``year 10000 is out of range``)."""
    far = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    d = c.Decision(
        id="mb-1", action="ban", ip="203.0.113.9", jail="amps", at=TS, expires_at=far, origin="manual"
    )
    with pytest.raises(c.ContractError):
        c.decode_decision(c.encode(d))
    with pytest.raises(c.ContractError):
        c.decode_ban(c.encode(c.BanState.from_decision(d)))
    ok = msgspec.structs.replace(d, expires_at=None)
    assert c.decode_decision(c.encode(ok)).expires_at is None  # permanent is how to say "forever"
