"""The pure half of the audit reader's fast path: coverage from enforcers' digests."""

from __future__ import annotations

from datetime import timedelta

from audit_helpers import T0, ban, key, state

from fleet2ban.audit import digests, queries
from fleet2ban.audit.view import FleetView
from fleet2ban.contract import BanState, Heartbeat, applied_digest, digest_item


def _bans(n: int) -> tuple[FleetView, list[str]]:
    view = FleetView()
    keys = []
    for i in range(n):
        d = ban(f"10.9.{i // 250}.{i % 250}", T0 + timedelta(seconds=i), secs=3600)
        view.add_ban(key(d), state(d), d.at)
        keys.append(key(d))
    return view, keys


def _digest(view: FleetView, keys: list[str]) -> str:
    return applied_digest(digest_item(k, view.bans[k].state.expires_at) for k in keys)


def test_digest_is_order_independent_and_names_each_ban_and_expiry() -> None:
    view, keys = _bans(50)
    d = _digest(view, keys)
    assert d == _digest(view, list(reversed(keys))) and d.startswith("50:")
    assert _digest(view, keys[:-1]) != d
    other = BanState.from_decision(ban("10.9.0.0", T0, secs=7200))
    assert digest_item(keys[0], other.expires_at) != digest_item(keys[0], view.bans[keys[0]].state.expires_at)


def test_one_missing_ban_among_many_fails_the_digest() -> None:
    """The lister's digest over 3,000 bans in force agrees with an enforcer that has them all, and not
    with one that lacks a single ban."""
    view, keys = _bans(3000)
    at = T0 + timedelta(seconds=3000)
    memo: digests.Memo = {}
    full, in_force = digests.in_force_digest(view.bans, {}, at, memo)
    assert sorted(in_force) == sorted(keys) and full == _digest(view, keys)
    for missing in (0, 1234, 2999):
        assert _digest(view, keys[:missing] + keys[missing + 1 :]) != full


def test_in_force_at_the_heartbeat_leaves_out_what_had_expired() -> None:
    view, keys = _bans(10)
    # ban i expires at T0 + i + 3600 s: at T0 + 3605 s, bans 0..5 have expired
    digest, in_force = digests.in_force_digest(view.bans, {}, T0 + timedelta(seconds=3605), {})
    assert in_force == keys[6:] and digest == _digest(view, keys[6:])


def test_prefix_tracker_puts_back_what_the_host_had_not_read() -> None:
    """Records past a host's offsets (a new ban, a lift, a re-ban with a longer expiry) are undone for
    that host's digest, and only for it."""
    view, keys = _bans(5)  # as if at offsets 0..4 of partition 0
    original = dict(view.bans)
    tracker = digests.PrefixTracker({"e1": {0: 5}, "e2": {0: 8}})
    assert not tracker.past(0, 4) and tracker.past(0, 5) and tracker.past(1, 0)
    # a partition one host does not name counts as unread by it
    assert digests.PrefixTracker({"a": {0: 5, 1: 3}, "b": {0: 5}}).past(1, 0)
    new = ban("10.9.9.9", T0 + timedelta(seconds=10), secs=3600)
    longer = ban(view.bans[keys[1]].state.ip, T0 + timedelta(seconds=11), secs=99_999)
    later: list[tuple[str, BanState | None]] = [
        (key(new), state(new)),  # offset 5
        (keys[0], None),  # offset 6: lifted
        (keys[1], state(longer)),  # offset 7: re-banned
        (keys[2], None),  # offset 8: lifted, but e2 had read up to here
    ]
    for off, (k, val) in enumerate(later, start=5):
        tracker.before(0, off, k, view.bans.get(k))
        view.add_ban(k, val, T0)
    at = T0 + timedelta(seconds=20)
    d1, k1 = digests.in_force_digest(view.bans, tracker.overrides["e1"], at, {})
    assert sorted(k1) == sorted(keys)
    assert d1 == applied_digest(digest_item(k, original[k].state.expires_at) for k in keys)
    d2, k2 = digests.in_force_digest(view.bans, tracker.overrides["e2"], at, {})
    assert sorted(k2) == sorted([key(new), *keys[1:]])
    items = [digest_item(key(new), state(new).expires_at), digest_item(keys[1], state(longer).expires_at)]
    items += [digest_item(k, original[k].state.expires_at) for k in keys[2:]]
    assert d2 == applied_digest(items)


def test_cover_sets_the_heartbeat_set_then_later_reports() -> None:
    """A matched host covers exactly the digest's keys; a ban after its heartbeat counts once it
    reports it applied, and a later failure is named."""
    from audit_helpers import applied, heartbeat

    view, keys = _bans(20)
    now = T0 + timedelta(seconds=60)
    hb = heartbeat("e1", now - timedelta(seconds=2), keys=keys[:3], total=20)
    d_new = ban("10.8.0.1", now - timedelta(seconds=1))
    d_bad = ban("10.8.0.2", now - timedelta(seconds=1))
    for d in (d_new, d_bad):
        view.add_ban(key(d), state(d), d.at)
    digests.cover(
        view,
        hb,
        keys,
        [
            applied("e1", d_new, now - timedelta(seconds=1)),
            applied("e1", d_bad, now, kind="failed", detail="x"),
        ],
    )
    got = {b.key: b.coverage for b in queries.bans_in_force(view, now)}
    assert all(got[k].applied == ["e1"] for k in keys) and got[key(d_new)].applied == ["e1"]
    assert got[key(d_bad)].missing == ["e1"] and got[key(d_bad)].failed == {"e1": "x"}
    assert isinstance(view.enforcers["e1"].heartbeat, Heartbeat)


def test_heartbeats_without_digest_fields_still_decode_and_new_ones_round_trip() -> None:
    from fleet2ban.contract import decode_report, encode

    old = decode_report(
        b'{"type":"heartbeat","host":"e1","role":"enforcer","at":"2026-11-25T08:00:00Z","v":1}'
    )
    assert isinstance(old, Heartbeat) and old.applied_digest is None and old.bans_offsets is None
    assert not digests.can_check(old)
    new = Heartbeat(host="e1", role="enforcer", at=T0, applied_digest="2:ab", bans_offsets={0: 10, 2: 7})
    back = decode_report(encode(new))
    assert back == new and digests.can_check(back)
