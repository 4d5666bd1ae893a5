"""A refused ban says which ban it was: jail, target and decision id, the rule and its words (the reports
an operator reads; scripts/mutate found these fields untested)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from enforcer.plan import JailSpec, Refusal, desired_state
from fleet2ban.allowlist import AllowList
from fleet2ban.contract import AllowEntry, BanState
from fleet2ban.rails import Rails

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def _ban(jail: str, ip: str, did: str, at: datetime = NOW) -> BanState:
    return BanState(
        decision_id=did, ip=ip, jail=jail, at=at, ports=[9007], expires_at=NOW + timedelta(hours=1)
    )


def test_each_refusal_names_its_ban_and_rule() -> None:
    bans = {
        ("amps", "127.0.0.9"): _ban("amps", "127.0.0.9", "d-loop"),
        ("gone", "203.0.113.5"): _ban("gone", "203.0.113.5", "d-jail"),
        ("amps", "203.0.112.0/23"): _ban("amps", "203.0.112.0/23", "d-wide"),
        ("amps", "203.0.113.7"): _ban("amps", "203.0.113.7", "d-ok"),
    }
    got = desired_state(bans, NOW, Rails(), [JailSpec("amps", (9007,))])
    assert got.refused == {
        ("amps", "127.0.0.9"): Refusal(
            "amps", "127.0.0.9", "d-loop", "loopback", "loopback: 127.0.0.9/32 overlaps 127.0.0.0/8"
        ),
        ("gone", "203.0.113.5"): Refusal(
            "gone", "203.0.113.5", "d-jail", "unknown-jail", "jail 'gone' is not configured on this host"
        ),
        ("amps", "203.0.112.0/23"): Refusal(
            "amps",
            "203.0.112.0/23",
            "d-wide",
            "too-wide",
            "too-wide: 203.0.112.0/23 is wider than /24 (enforcer.min_prefix_v4)",
        ),
    }
    assert list(got.wants) == [("amps", "203.0.113.7")]
    assert got.wants[("amps", "203.0.113.7")].decision_id == "d-ok"


def test_the_cap_refuses_the_newest_by_name() -> None:
    bans = {
        ("amps", "203.0.113.1"): _ban("amps", "203.0.113.1", "d-old", NOW - timedelta(seconds=2)),
        ("amps", "203.0.113.2"): _ban("amps", "203.0.113.2", "d-new", NOW - timedelta(seconds=1)),
    }
    got = desired_state(bans, NOW, Rails(max_bans=1), [JailSpec("amps", (9007,))])
    assert got.refused == {
        ("amps", "203.0.113.2"): Refusal(
            "amps", "203.0.113.2", "d-new", "cap", "1 active bans reached (enforcer.max_bans)"
        )
    }
    assert list(got.wants) == [("amps", "203.0.113.1")]


def test_an_allow_list_refusal_names_its_ban_and_the_entry_and_holds_in_its_jail_only() -> None:
    entry = AllowEntry(id="al-1", network="203.0.113.0/24", at=NOW, jail="amps", by="alice", reason="partner")
    bans = {
        ("amps", "203.0.113.7"): _ban("amps", "203.0.113.7", "d-amps"),
        ("other", "203.0.113.7"): _ban("other", "203.0.113.7", "d-other"),
    }
    jails = [JailSpec("amps", (9007,)), JailSpec("other", (9008,))]
    got = desired_state(bans, NOW, Rails(), jails, AllowList([entry]))
    assert got.refused == {
        ("amps", "203.0.113.7"): Refusal(
            "amps",
            "203.0.113.7",
            "d-amps",
            "allowed",
            "allowed: allow-list entry 203.0.113.0/24 (jail amps) by alice: partner",
        )
    }
    assert list(got.wants) == [("other", "203.0.113.7")]
