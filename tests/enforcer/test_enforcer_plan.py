"""The enforcer's pure core: desired state, safety rails, the change plan."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta

import pytest

from enforcer.plan import (
    MAX_KERNEL_TIMEOUT,
    Add,
    Delete,
    JailSpec,
    KeptDesired,
    KernelEntry,
    Rails,
    desired_state,
    kernel_timeout,
    never_renews,
    next_expiry,
    plan,
    renew_needed,
)
from fleet2ban.contract import BanState
from fleet2ban.rails import FAST_PATH_SPECIAL, check_target
from fleet2ban.settings import EnforcerSettings, JailSettings

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
JAILS = [JailSpec("amps", (9007,))]


def ban(
    ip: str, jail: str = "amps", expires_in: float | None = 120, at_ago: float = 1, did: str = ""
) -> BanState:
    return BanState(
        decision_id=did or f"b-{ip}",
        ip=ip,
        jail=jail,
        at=NOW - timedelta(seconds=at_ago),
        expires_at=None if expires_in is None else NOW + timedelta(seconds=expires_in),
    )


def bans(*items: BanState) -> dict[tuple[str, str], BanState]:
    return {(b.jail, b.ip): b for b in items}


def rails(**kw: object) -> Rails:
    settings = EnforcerSettings(**kw)
    jail = JailSettings(name="amps", ignoreip=["192.0.2.0/24"])
    return Rails.build(settings, [jail], own=["10.231.0.1", "fd00:231::1"], brokers=["10.9.9.9"])


def test_active_bans_are_wanted_and_expired_ones_are_not() -> None:
    d = desired_state(bans(ban("203.0.113.9"), ban("203.0.113.10", expires_in=-1)), NOW, rails(), JAILS)
    assert set(d.wants) == {("amps", "203.0.113.9")}
    assert d.expired == 1
    assert not d.refused


def test_permanent_ban_is_wanted_with_no_timeout() -> None:
    d = desired_state(bans(ban("2001:db8::5", expires_in=None)), NOW, rails(), JAILS)
    want = d.wants[("amps", "2001:db8::5")]
    assert want.family == 6 and want.expires_at is None


def test_safety_rails_refuse_and_say_which_rule() -> None:
    items = bans(
        ban("127.0.0.1"),
        ban("::1"),
        ban("10.231.0.1"),  # the host's own address
        ban("fd00:231::1"),  # the host's own IPv6 address
        ban("10.9.9.9"),  # a Kafka broker
        ban("192.0.2.77"),  # in the jail's ignoreip
        ban("0.0.0.0/0"),
        ban("10.231.0.0/24"),  # contains the host's own address
        ban("198.51.0.0/16"),  # wider than /24
        ban("198.51.100.0/16"),  # not canonical (keys are normalised on the way in): never applied
        ban("2001:db8::1%1 timeout 5\nadd f2b-amps-4 10.0.0.1"),  # a scope id carrying ipset commands
        ban("0.0.0.1"),  # "this network"
        ban("169.254.1.1"),
        ban("fe80::1"),
        ban("203.0.113.9"),  # fine
    )
    d = desired_state(items, NOW, rails(), JAILS)
    assert set(d.wants) == {("amps", "203.0.113.9")}
    rules = {k[1]: r.rule for k, r in d.refused.items()}
    assert rules["127.0.0.1"] == "loopback"
    assert rules["::1"] == "loopback"
    assert rules["10.231.0.1"] == "protected"
    assert rules["fd00:231::1"] == "protected"
    assert rules["10.9.9.9"] == "protected"
    assert rules["192.0.2.77"] == "protected"
    assert rules["0.0.0.0/0"] == "too-wide"
    assert rules["10.231.0.0/24"] == "protected"
    assert rules["198.51.0.0/16"] == "too-wide"
    assert rules["198.51.100.0/16"] == "invalid"
    assert rules["2001:db8::1%1 timeout 5\nadd f2b-amps-4 10.0.0.1"] == "invalid"
    assert rules["0.0.0.1"] == "unspecified"
    assert rules["169.254.1.1"] == "link-local"
    assert rules["fe80::1"] == "link-local"
    assert all(r.detail for r in d.refused.values())


def test_ignoreip_is_per_jail_and_protect_is_global() -> None:
    jails = [JailSpec("amps", (9007,)), JailSpec("other", (9008,))]
    r = Rails.build(
        EnforcerSettings(protect=["198.18.0.0/15"]),
        [JailSettings(name="amps", ignoreip=["192.0.2.0/24"]), JailSettings(name="other")],
    )
    items = bans(
        ban("192.0.2.5", jail="amps"), ban("192.0.2.5", jail="other"), ban("198.18.0.1", jail="other")
    )
    d = desired_state(items, NOW, r, jails)
    assert set(d.wants) == {("other", "192.0.2.5")}


def test_unknown_jail_is_refused() -> None:
    d = desired_state(bans(ban("203.0.113.9", jail="nope")), NOW, rails(), JAILS)
    assert d.refused[("nope", "203.0.113.9")].rule == "unknown-jail"


def test_cap_keeps_the_oldest_and_alarms() -> None:
    items = bans(*(ban(f"203.0.113.{i}", at_ago=100 - i) for i in range(1, 11)))
    d = desired_state(items, NOW, rails(max_bans=5, alarm_ratio=0.5), JAILS)
    assert set(d.wants) == {("amps", f"203.0.113.{i}") for i in range(1, 6)}
    assert {k[1] for k, r in d.refused.items() if r.rule == "cap"} == {f"203.0.113.{i}" for i in range(6, 11)}
    assert d.alarm


def test_no_alarm_below_threshold() -> None:
    d = desired_state(bans(ban("203.0.113.1")), NOW, rails(max_bans=10, alarm_ratio=0.5), JAILS)
    assert not d.alarm


def test_plan_adds_missing_and_deletes_strays() -> None:
    d = desired_state(
        bans(ban("203.0.113.9", expires_in=60), ban("2001:db8::9", expires_in=None)), NOW, rails(), JAILS
    )
    kernel = {("amps", "198.51.100.1"): KernelEntry("amps", "198.51.100.1", 30)}
    ch = plan(d.wants, kernel, NOW, timeouts=True)
    assert ch.adds == [
        Add("amps", "2001:db8::9", 6, None, "b-2001:db8::9"),
        Add("amps", "203.0.113.9", 4, 60, "b-203.0.113.9"),
    ]
    assert ch.deletes == [Delete("amps", "198.51.100.1", 4)]


def test_plan_is_empty_when_kernel_matches() -> None:
    d = desired_state(bans(ban("203.0.113.9", expires_in=60)), NOW, rails(), JAILS)
    kernel = {("amps", "203.0.113.9"): KernelEntry("amps", "203.0.113.9", 59)}
    assert not plan(d.wants, kernel, NOW, timeouts=True)


def test_extended_ban_renews_the_kernel_timeout() -> None:
    d = desired_state(bans(ban("203.0.113.9", expires_in=600)), NOW, rails(), JAILS)
    kernel = {("amps", "203.0.113.9"): KernelEntry("amps", "203.0.113.9", 30)}
    ch = plan(d.wants, kernel, NOW, timeouts=True)
    assert ch.adds == [Add("amps", "203.0.113.9", 4, 600, "b-203.0.113.9", renew=True)]
    # Without kernel timeouts (iptables) presence is all that counts.
    assert not plan(d.wants, kernel, NOW, timeouts=False)


def test_ban_made_permanent_renews() -> None:
    d = desired_state(bans(ban("203.0.113.9", expires_in=None)), NOW, rails(), JAILS)
    kernel = {("amps", "203.0.113.9"): KernelEntry("amps", "203.0.113.9", 30)}
    assert plan(d.wants, kernel, NOW, timeouts=True).adds[0].timeout is None


def test_kernel_timeout_rounds_up_and_caps() -> None:
    assert kernel_timeout(NOW + timedelta(seconds=0.2), NOW) == 1
    assert kernel_timeout(NOW + timedelta(seconds=10.5), NOW) == 11
    assert kernel_timeout(NOW + timedelta(days=400), NOW) == MAX_KERNEL_TIMEOUT
    assert kernel_timeout(None, NOW) is None


def test_renew_tolerates_rounding_only() -> None:
    assert not renew_needed(118, 120)
    assert renew_needed(100, 120)
    assert renew_needed(None, 120)
    assert renew_needed(120, None)
    assert not renew_needed(None, None)


def test_next_expiry_is_the_earliest() -> None:
    d = desired_state(
        bans(
            ban("203.0.113.1", expires_in=50),
            ban("203.0.113.2", expires_in=5),
            ban("203.0.113.3", expires_in=None),
        ),
        NOW,
        rails(),
        JAILS,
    )
    assert next_expiry(d.wants) == NOW + timedelta(seconds=5)


def test_rails_build_skips_garbage_addresses() -> None:
    r = Rails.build(EnforcerSettings(), [JailSettings()], own=["not-an-ip", "10.0.0.1"])
    assert r.protect == (ipaddress.ip_network("10.0.0.1/32"),)


@pytest.mark.parametrize(
    "target",
    [
        "0.0.0.0", "0.1.2.3", "127.0.0.1", "127.255.255.255", "169.254.1.1", "224.0.0.1", "239.1.1.1",
        "255.255.255.255", "::", "::1", "::ffff:127.0.0.1", "fe80::1", "febf::1", "ff02::1",
        "10.231.0.1", "fd00:231::1", "10.9.9.9", "192.0.2.77", "203.0.113.9", "2001:db8::9", "8.8.8.8",
        "100.64.0.1", "223.255.255.255", "fec0::1", "1.1.1.1",
    ],
)  # fmt: skip
def test_fast_path_agrees_with_the_rails(target: str) -> None:
    r = rails()
    full = check_target(target, protect=(*r.protect, *r.ignore["amps"]), min_prefix_v4=24, min_prefix_v6=48)
    assert (r.refusal("amps", target) is None) == (not full)
    if r._clearly_allowed("amps", target):
        assert not full


def test_fast_path_agrees_with_the_rails_at_every_range_edge() -> None:
    # overlapping, nested and touching protected networks: merged into disjoint ranges for a bisect
    protect = tuple(
        ipaddress.ip_network(n)
        for n in (
            "10.0.0.0/24",
            "10.0.0.128/25",
            "10.0.1.0/24",
            "10.0.3.7/32",
            "2001:db8::/64",
            "2001:db8::/48",
        )
    )
    r = Rails(protect=protect, ignore={"amps": (ipaddress.ip_network("192.0.2.0/24"),)})
    edges: list[str] = []
    for net in (*protect, *FAST_PATH_SPECIAL, *r.ignore["amps"]):
        cls = ipaddress.IPv4Address if net.version == 4 else ipaddress.IPv6Address
        lo, hi = int(net.network_address), int(net.broadcast_address)
        edges += [str(cls(v)) for v in (lo - 1, lo, hi, hi + 1) if 0 <= v < 2**net.max_prefixlen]
    for target in edges:
        full = check_target(target, protect=(*protect, *r.ignore["amps"]))
        if r._clearly_allowed("amps", target):
            assert not full, target
        assert (r.refusal("amps", target) is None) == (not full), target


def test_merged_ranges_are_disjoint_and_sorted() -> None:
    from fleet2ban.rails import merged_ranges

    assert merged_ranges([(5, 10), (1, 3), (4, 4), (20, 30), (25, 26), (12, 13)]) == (
        [1, 12, 20],
        [10, 13, 30],
    )
    assert merged_ranges([]) == ([], [])


def test_fast_path_special_ranges_cover_the_rails_own() -> None:
    from fleet2ban import rails as rails_module

    always = getattr(rails_module, "_ALWAYS", ())
    for _, net in always:
        assert any(net.subnet_of(s) for s in FAST_PATH_SPECIAL if s.version == net.version), net


def test_rail_verdicts_are_memoised_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    import fleet2ban.rails as rails_module

    monkeypatch.setattr(rails_module, "VERDICTS_MAX", 3)
    r = rails()
    targets = ["203.0.113.1", "203.0.113.2", "127.0.0.1", "203.0.113.3", "10.231.0.1"]
    first = [r.refusal("amps", t) for t in targets]
    assert first[:2] == [None, None] and first[3] is None
    assert first[2] is not None and first[4] is not None  # loopback, our own address
    assert len(r._verdicts) <= 3
    # asked again (as every reconcile does), the answers are the same, memoised or not
    assert [r.refusal("amps", t) for t in targets] == first
    assert len(r._verdicts) <= 3


def test_renew_tolerance_is_two_seconds_or_a_fiftieth_of_the_ban() -> None:
    assert renew_needed(117, 120) and renew_needed(123, 120)  # 3 s off a 2-minute ban: re-applied
    assert not renew_needed(9800, 10000) and renew_needed(9799, 10000)  # 200 s is 1/50 of 10000


def test_every_expired_ban_is_counted() -> None:
    items = bans(*(ban(f"203.0.113.{i}", expires_in=-i) for i in range(1, 4)), ban("203.0.113.9"))
    d = desired_state(items, NOW, rails(), JAILS)
    assert d.expired == 3 and set(d.wants) == {("amps", "203.0.113.9")}


def test_never_renews_within_two_seconds_either_side_inclusive() -> None:
    for off in (-2.0, -1.0, 0.0, 2.0):
        assert never_renews(NOW + timedelta(seconds=off), NOW), off
    for off in (-2.001, 2.001):
        assert not never_renews(NOW + timedelta(seconds=off), NOW), off
    # a kernel deadline a day off the ban's expiry needs renewing
    assert not never_renews(NOW + timedelta(days=1), NOW)


# ------------------------------------------------------------------------------ KeptDesired (incremental)


def kept_of(
    *items: BanState, **rails_kw: object
) -> tuple[KeptDesired, dict[tuple[str, str], BanState], Rails]:
    state = bans(*items)
    r = rails(**rails_kw)
    return KeptDesired(desired_state(state, NOW, r, JAILS)), state, r


def test_kept_desired_pops_a_ban_expiring_exactly_now_and_not_one_extended_since() -> None:
    kept, state, r = kept_of(ban("203.0.113.1", expires_in=10), ban("203.0.113.2", expires_in=10))
    assert kept.due() == NOW + timedelta(seconds=10)
    # the second ban is re-applied for longer: its first expiry is stale
    state[("amps", "203.0.113.2")] = ban("203.0.113.2", expires_in=60, did="again")
    assert kept.update({("amps", "203.0.113.2")}, state, NOW, r, {"amps"})
    assert kept.pop_due(NOW + timedelta(seconds=10)) == {
        ("amps", "203.0.113.1")
    }  # inclusive, not the stale one
    del state[("amps", "203.0.113.1")]
    assert kept.update({("amps", "203.0.113.1")}, state, NOW, r, {"amps"})
    assert kept.due() == NOW + timedelta(seconds=60)
    assert kept.pop_due(NOW + timedelta(seconds=59)) == set()


def test_kept_desired_counts_re_evaluated_bans_once_against_the_cap() -> None:
    items = [ban(f"203.0.113.{i}") for i in range(1, 5)]
    kept, state, r = kept_of(*items, max_bans=5)
    # four wanted bans re-evaluated (still wanted) and one new: five, at the cap, is fine
    state[("amps", "203.0.113.9")] = ban("203.0.113.9")
    assert kept.update({*state}, state, NOW, r, {"amps"})
    assert len(kept.desired.wants) == 5
    # a sixth is over the cap: the caller must compute the whole desired state (the cap picks the oldest)
    state[("amps", "203.0.113.10")] = ban("203.0.113.10")
    assert not kept.update({("amps", "203.0.113.10")}, state, NOW, r, {"amps"})


def test_kept_desired_forgets_a_refusal_once_the_ban_is_wanted() -> None:
    kept, state, r = kept_of(ban("203.0.113.7", jail="nope"))
    assert ("nope", "203.0.113.7") in kept.desired.refused
    assert kept.update({("nope", "203.0.113.7")}, state, NOW, r, {"amps", "nope"})
    assert ("nope", "203.0.113.7") in kept.desired.wants
    assert ("nope", "203.0.113.7") not in kept.desired.refused


def test_kept_desired_rebuilds_its_expiry_heap_from_stale_entries() -> None:
    kept, state, r = kept_of(ban("203.0.113.1", expires_in=10))
    key = ("amps", "203.0.113.1")
    for i in range(1, 1100):  # re-applied over and over: each leaves a stale heap entry behind
        state[key] = ban("203.0.113.1", expires_in=10 + i, did=f"d{i}")
        assert kept.update({key}, state, NOW, r, {"amps"})
    assert kept.due() == NOW + timedelta(seconds=1109)
    assert kept.pop_due(NOW + timedelta(seconds=1108)) == set()
    assert kept.pop_due(NOW + timedelta(seconds=1109)) == {key}
