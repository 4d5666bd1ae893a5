"""The query layer without Kafka: FleetView folds and the audit answers, with records built by hand."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest
from audit_helpers import T0, applied, ban, heartbeat, key, state, unban

from fleet2ban.audit import (
    BanFilter,
    FleetView,
    bans_in_force,
    decisions_in_range,
    fleet_status,
    ip_history,
    to_json,
    verify,
)
from fleet2ban.audit.partition import partition_for
from fleet2ban.audit.timeparse import format_duration, parse_duration, parse_when
from fleet2ban.contract import Decision, Report, ban_key, encode

S = timedelta(seconds=1)


def fleet() -> tuple[FleetView, list[Decision]]:
    """Two enforcers (e1, e2) live at T0+30s; d1 applied on both; d2 only on e1; d3 expired."""
    v = FleetView()
    d1 = ban("10.0.0.1", T0)
    d2 = ban("10.0.0.2", T0 + 10 * S, origin="manual", by="alice", secs=None, reason="scanner")
    d3 = ban("10.0.0.3", T0 - 3600 * S)
    for d in (d1, d2, d3):
        v.add_ban(key(d), state(d), d.at)
    v.add_report(heartbeat("e1", T0 + 1 * S, keys=[key(d1)]))
    v.add_report(heartbeat("e2", T0 + 1 * S, keys=[key(d1)]))
    v.add_report(applied("e1", d2, T0 + 11 * S))
    v.add_report(heartbeat("e1", T0 + 30 * S, keys=[key(d1), key(d2)]))
    v.add_report(heartbeat("e2", T0 + 30 * S, keys=[key(d1)]))
    return v, [d1, d2, d3]


def test_bans_in_force_with_coverage_and_filters() -> None:
    v, _ = fleet()
    now = T0 + 31 * S
    bans = bans_in_force(v, now)
    assert [b.ban.ip for b in bans] == ["10.0.0.2", "10.0.0.1"]  # newest first; the expired one is gone
    b2, b1 = bans
    assert b1.coverage.applied == ["e1", "e2"] and b1.coverage.missing == [] and b1.coverage.live == 2
    assert b2.coverage.applied == ["e1"] and b2.coverage.missing == ["e2"]
    assert b2.ban.origin == "manual" and b2.ban.by == "alice" and b2.ban.expires_at is None
    assert [b.ban.ip for b in bans_in_force(v, now, BanFilter(origin="manual"))] == ["10.0.0.2"]
    assert [b.ban.ip for b in bans_in_force(v, now, BanFilter(network="10.0.0.0/31"))] == ["10.0.0.1"]
    assert bans_in_force(v, now, BanFilter(jail="other")) == []
    assert bans_in_force(v, now, BanFilter(network="2001:db8::/32")) == []
    # JSON form round-trips as plain data with RFC 3339 times
    data = msgspec.json.decode(to_json(bans))
    assert data[0]["ban"]["ip"] == "10.0.0.2" and data[0]["coverage"]["missing"] == ["e2"]
    assert data[1]["ban"]["at"] == "2026-11-25T08:00:00Z"


def test_silent_enforcer_leaves_coverage_and_tombstone_lifts() -> None:
    v, (d1, _d2, _d3) = fleet()
    later = T0 + 100 * S  # both heartbeats 70 s old: silent (3 x 5 s, at least 10 s)
    assert all(b.coverage.live == 0 for b in bans_in_force(v, later))
    v.add_report(heartbeat("e1", later, keys=[key(d1)]))
    assert bans_in_force(v, later)[-1].coverage.applied == ["e1"]
    v.add_ban(key(d1), None, later)
    assert [b.ban.ip for b in bans_in_force(v, later)] == ["10.0.0.2"]
    assert v.lifted[key(d1)] == later


def test_reports_update_applied_set_between_heartbeats() -> None:
    v, (d1, d2, _d3) = fleet()
    v.add_report(applied("e2", d2, T0 + 32 * S, kind="failed", detail="ipset: set full"))
    v.add_report(applied("e1", d1, T0 + 33 * S, kind="removed"))
    b2, b1 = bans_in_force(v, T0 + 34 * S)
    assert b1.coverage.applied == ["e2"] and b1.coverage.missing == ["e1"]
    assert b2.coverage.missing == ["e2"] and b2.coverage.failed == {"e2": "ipset: set full"}
    v.add_report(applied("e2", d2, T0 + 35 * S))  # a later success clears the failure
    b2, _ = bans_in_force(v, T0 + 36 * S)
    assert b2.coverage.missing == [] and b2.coverage.failed == {}


def test_truncated_heartbeat_merges_instead_of_replacing() -> None:
    v, (d1, d2, _d3) = fleet()
    # e1 says it has 2 keys but sent only one: keep what reports told us about the other
    v.add_report(heartbeat("e1", T0 + 40 * S, keys=[key(d1)], total=2))
    assert set(v.enforcers["e1"].applied) == {key(d1), key(d2)}
    v.add_report(heartbeat("e1", T0 + 45 * S, keys=[key(d1)]))  # complete: replaces
    assert set(v.enforcers["e1"].applied) == {key(d1)}


def test_add_raw_counts_bad_records_and_never_raises() -> None:
    v = FleetView()
    d = ban("10.9.9.9", T0)
    assert v.add_raw("bans", key(d).encode(), encode(state(d)), T0)
    assert not v.add_raw("bans", b"no-pipe", encode(state(d)), T0)
    assert not v.add_raw("reports", b"h", b"{not json", T0)
    assert not v.add_raw("decisions", b"x", b'{"v":1}', T0)
    assert not v.add_raw("bans", None, None, T0)
    assert v.bad_records == 4 and len(v.bans) == 1
    assert v.add_raw("decisions", b"10.9.9.9", encode(d), T0) and v.recent_decisions[-1] == d


def test_fleet_status_marks_silent_components() -> None:
    v, _ = fleet()
    v.add_report(heartbeat("s1", T0 + 29 * S, role="shipper", counters={"events_shipped": 42.0}, lag=0.5))
    v.add_report(heartbeat("s2", T0 - 600 * S, role="shipper"))
    v.add_report(heartbeat("p1", T0 + 29 * S, role="processor", interval=10.0))
    hosts = fleet_status(v, T0 + 31 * S)
    by = {(h.role, h.host): h for h in hosts}
    assert set(by) == {
        ("enforcer", "e1"),
        ("enforcer", "e2"),
        ("shipper", "s1"),
        ("shipper", "s2"),
        ("processor", "p1"),
    }
    assert by[("enforcer", "e1")].applied == 2 and not by[("enforcer", "e1")].silent
    assert by[("shipper", "s1")].counters == {"events_shipped": 42.0} and by[("shipper", "s1")].lag == 0.5
    assert by[("shipper", "s2")].silent and not by[("processor", "p1")].silent
    assert fleet_status(FleetView(), T0) == []


def test_enforcer_with_reports_but_no_heartbeat_is_listed_silent() -> None:
    v = FleetView()
    d = ban("10.0.0.5", T0)
    v.add_report(applied("lonely", d, T0))
    (h,) = fleet_status(v, T0 + S)
    assert h.host == "lonely" and h.silent and h.last_seen is None and h.applied == 1


def test_decisions_in_range_and_filters() -> None:
    ds = [ban(f"10.1.0.{i}", T0 + i * 60 * S, origin="manual" if i % 2 else "auto") for i in range(10)]
    ds.append(unban("10.1.0.3", T0 + 200 * S))
    got = decisions_in_range(reversed(ds), T0 + 120 * S, T0 + 300 * S)
    assert [d.at for d in got] == sorted(d.at for d in got)
    assert [d.ip for d in got] == ["10.1.0.2", "10.1.0.3", "10.1.0.3", "10.1.0.4", "10.1.0.5"]
    assert [d.ip for d in decisions_in_range(ds, None, None, BanFilter(origin="manual"))][:2] == [
        "10.1.0.1",
        "10.1.0.3",
    ]
    assert decisions_in_range(ds, T0 + 10_000 * S, None) == []


def test_ip_history_orders_decisions_and_reports() -> None:
    d1 = ban("10.0.0.7", T0)
    u1 = unban("10.0.0.7", T0 + 120 * S)
    d2 = ban("10.0.0.7", T0 + 300 * S, secs=None)
    other = ban("10.0.0.8", T0)
    reps = [
        applied("e1", d1, T0 + S),
        applied("e1", d1, T0 + 121 * S, kind="removed"),
        applied("e1", other, T0),
    ]
    h = ip_history("10.0.0.7", [d2, other, u1, d1], reps, [state(d2), state(other)], T0 + 400 * S)
    assert [e.kind for e in h.timeline] == ["decision", "report", "decision", "report", "decision"]
    assert [d.id for d in h.decisions] == [d1.id, u1.id, d2.id]
    assert [b.decision_id for b in h.in_force] == [d2.id]
    assert h.timeline[0].decision is not None and h.timeline[0].decision.evidence
    empty = ip_history("192.0.2.1", [d1], reps, [], T0)
    assert empty.timeline == [] and empty.in_force == []


def test_verify_healthy_fleet_passes() -> None:
    v, (d1, d2, d3) = fleet()
    v.add_report(applied("e2", d2, T0 + 12 * S))
    v.add_report(heartbeat("e2", T0 + 30 * S, keys=[key(d1), key(d2)]))
    r = verify(v, [d1, d2, d3], T0 + 31 * S, timedelta(seconds=5))
    assert r.ok, r.discrepancies
    assert r.bans_checked == 2 and r.live == ["e1", "e2"]


def test_verify_names_missing_late_untraced_failed_lingering_silent() -> None:
    v, (d1, d2, d3) = fleet()
    now = T0 + 31 * S
    r = verify(v, [d1, d2, d3], now, timedelta(seconds=5))
    assert not r.ok
    assert [(x.kind, x.host, x.key) for x in r.discrepancies] == [("missing", "e2", key(d2))]
    # untraced: e1 reports a decision nobody made
    ghost = ban("10.0.0.66", T0, did="b-ghost")
    v.add_report(applied("e1", ghost, T0 + 20 * S))
    # late: e2 applied d2 25 s after it was recorded
    v.add_report(applied("e2", d2, T0 + 35 * S))
    now = T0 + 36 * S
    kinds = {(x.kind, x.host) for x in verify(v, [d1, d2, d3], now, timedelta(seconds=5)).discrepancies}
    assert kinds == {("untraced", "e1"), ("late", "e2")}
    assert ("late", "e2") not in {
        (x.kind, x.host) for x in verify(v, [d1, d2, d3], now, timedelta(seconds=60)).discrepancies
    }
    # failed + lingering
    v2, (d1, d2, d3) = fleet()
    v2.add_report(applied("e2", d2, T0 + 12 * S, kind="failed", detail="iptables: permission denied"))
    v2.add_ban(key(d1), None, T0 + 40 * S)  # lifted at 40 s, e1 still has it at 60 s
    v2.add_report(heartbeat("e1", T0 + 60 * S, keys=[key(d1), key(d2)]))
    v2.add_report(heartbeat("e2", T0 + 60 * S, keys=[]))
    found = verify(v2, [d1, d2, d3], T0 + 61 * S, timedelta(seconds=5)).discrepancies
    assert {(x.kind, x.host) for x in found} == {("failed", "e2"), ("lingering", "e1")}
    # silent: e2 stops before a new ban
    v3, (d1, d2, d3) = fleet()
    d4 = ban("10.0.0.4", T0 + 40 * S)
    v3.add_ban(key(d4), state(d4), d4.at)
    v3.add_report(heartbeat("e1", T0 + 60 * S, keys=[key(d1), key(d2), key(d4)]))
    v3.add_report(applied("e2", d2, T0 + 12 * S))
    found = verify(v3, [d1, d2, d3, d4], T0 + 61 * S, timedelta(seconds=5)).discrepancies
    assert ("silent", "e2") in {(x.kind, x.host) for x in found}
    assert ("missing", "e2", key(d4)) in {(x.kind, x.host, x.key) for x in found}
    assert all(x.host == "e2" for x in found)


def test_verify_skipped_by_host_rails_is_not_a_discrepancy() -> None:
    v, (d1, d2, d3) = fleet()
    v.add_report(applied("e2", d2, T0 + 12 * S, kind="skipped", detail="own address"))
    assert verify(v, [d1, d2, d3], T0 + 31 * S, timedelta(seconds=5)).ok
    assert bans_in_force(v, T0 + 31 * S)[0].coverage.skipped == {"e2": "own address"}


def test_verify_untraced_heartbeat_key() -> None:
    v, (d1, d2, d3) = fleet()
    v.add_report(heartbeat("e2", T0 + 30 * S, keys=[key(d1), key(d2), ban_key("amps", "10.6.6.6")]))
    found = verify(v, [d1, d2, d3], T0 + 31 * S, timedelta(seconds=5)).discrepancies
    assert [(x.kind, x.key) for x in found] == [("untraced", "amps|10.6.6.6")]


def test_report_without_decision_id_traces_by_key() -> None:
    v, (d1, d2, d3) = fleet()
    r = Report(host="e2", kind="applied", jail="amps", ip="10.0.0.2", at=T0 + 12 * S)
    v.add_report(r)
    v.add_report(Report(host="e2", kind="applied", jail="amps", ip="10.7.7.7", at=T0 + 12 * S))
    found = verify(v, [d1, d2, d3], T0 + 31 * S, timedelta(seconds=5)).discrepancies
    assert {(x.kind, x.key) for x in found} == {("untraced", "amps|10.7.7.7")}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("10m", 600), ("1h30m", 5400), ("2d", 172800), ("1w", 604800), ("250ms", 0.25)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "abc", "10x", "-5", "0", "1h abc", "h1"])
def test_parse_duration_rejects(text: str) -> None:
    from fleet2ban.audit.exceptions import BadTimeError

    with pytest.raises(BadTimeError):
        parse_duration(text)


def test_parse_when() -> None:
    assert parse_when("1h", T0) == T0 - timedelta(hours=1)
    assert parse_when("now", T0) == T0
    assert parse_when("2026-11-25", T0) == T0.replace(hour=0)
    assert parse_when("2026-11-25T09:00+01:00", T0) == T0
    assert parse_when("2026-11-25T08:00:00Z", T0) == T0
    assert (
        format_duration(45) == "45s"
        and format_duration(3900) == "1h05m"
        and format_duration(90000) == "1d01h"
    )


def test_partition_for_matches_kafka_murmur2() -> None:
    # reference values from the Java client's Utils.murmur2 (via aiokafka's implementation)
    from aiokafka.partitioner import murmur2

    for k in [b"", b"a", b"abc", b"10.1.2.3", b"amps|2001:db8::1", "ünï".encode()]:
        assert partition_for(k, 7) == (murmur2(k) & 0x7FFFFFFF) % 7


def test_verify_restarted_enforcer_is_not_late() -> None:
    v, (d1, d2, d3) = fleet()
    # e2 restarts at +100 s and applies d2 at once: not "late" although the ban is 90 s older
    hb = heartbeat("e2", T0 + 101 * S, keys=[key(d1)])
    v.add_report(
        type(hb)(**{**{f: getattr(hb, f) for f in hb.__struct_fields__}, "started_at": T0 + 100 * S})
    )
    v.add_report(applied("e2", d2, T0 + 101 * S))
    v.add_report(heartbeat("e1", T0 + 101 * S, keys=[key(d1), key(d2)]))
    assert verify(v, [d1, d2, d3], T0 + 102 * S, timedelta(seconds=5)).ok


def test_status_flags_a_processor_lag_that_grows_past_the_alarm_only() -> None:
    view = FleetView()
    for i, lag in enumerate([10.0, 5_000.0, 7_000.0]):
        view.add_report(heartbeat("p1", T0 + timedelta(seconds=5 * i), role="processor", lag=lag))
    view.add_report(heartbeat("p2", T0, role="processor", lag=9_000.0))
    view.add_report(heartbeat("p2", T0 + timedelta(seconds=5), role="processor", lag=8_000.0))
    view.add_report(heartbeat("p3", T0, role="processor", lag=10.0))
    view.add_report(heartbeat("p3", T0 + timedelta(seconds=5), role="processor", lag=900.0))
    st = {h.host: h for h in fleet_status(view, T0 + timedelta(seconds=11))}
    assert st["p1"].lag_growing, "5,000 -> 7,000 records behind: growing past the alarm"
    assert not st["p2"].lag_growing, "behind, but catching up"
    assert not st["p3"].lag_growing, "growing, but below the alarm"
