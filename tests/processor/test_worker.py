"""The Faust worker on the local Kafka cluster, end to end (one worker shared by the module)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from fleet2ban.contract import Decision, EventBatch, Line, decode_ban, encode, utcnow

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_fleet_wide_failures_ban_with_decision_and_bans_entry(fleet) -> None:  # type: ignore[no-untyped-def]
    ip = "203.0.113.10"
    for host in ("h1", "h2", "h3"):  # 7 + 7 + 6: no host reaches maxretry=20 on its own
        fleet.fail(ip, 7 if host != "h3" else 6, host=host)
    (d,) = fleet.wait_decision(ip)
    assert d.action == "ban" and d.jail == "amps" and d.origin == "auto"
    assert d.failures == 20 and d.hosts == ["h1", "h2", "h3"] and d.ban_count == 1
    assert d.expires_at is not None and d.expires_at - d.at == timedelta(seconds=120)
    key = b"amps|" + ip.encode()
    # the bans record follows the decision (a separate write): wait for it, bounded
    fleet.wait_for("the ban on bans", lambda: fleet.bans().get(key) is not None, 20)
    state = fleet.bans()[key]
    assert state is not None
    ban = decode_ban(state)
    assert ban.decision_id == d.id and ban.expires_at == d.expires_at
    # further failures while banned: evidence only, no second decision
    fleet.fail(ip, 25, host="h1")
    probe = "203.0.113.11"
    fleet.fail(probe, 20)
    fleet.wait_decision(probe)
    assert len(fleet.decisions(ip)) == 1


def test_expiry_writes_unban_and_tombstone(fleet) -> None:  # type: ignore[no-untyped-def]
    ip = "203.0.113.20"
    fleet.fail(ip, 3, reason="name in use")  # jail "short": maxretry 3, bantime 2 s
    (ban,) = fleet.wait_decision(ip)
    (unban,) = fleet.wait_decision(ip, "unban", timeout=15)
    assert unban.at == ban.expires_at and unban.origin == "auto" and unban.reason == "expired"
    key = b"short|" + ip.encode()
    # each topic arrives in its own time: the tombstone may follow the unban decision by a moment
    records = fleet.wait_for(
        "the tombstone on bans", lambda: (r := fleet.ban_records(key)) and r[-1] is None and r, 15
    )
    assert records[0] is not None and records[-1] is None  # the state, then the tombstone


def test_manual_decisions_are_mirrored_not_reissued(fleet) -> None:  # type: ignore[no-untyped-def]
    ip = "203.0.113.30"
    now = utcnow()
    manual = Decision(
        id="m-test-1",
        action="ban",
        ip=ip,
        jail="amps",
        at=now,
        expires_at=now + timedelta(hours=1),
        origin="manual",
        by="alice",
        reason="seen in the SOC",
        ports=[9007],
    )
    fleet.produce_raw(ip.encode(), encode(manual), fleet.topics.decisions)
    key = b"amps|" + ip.encode()

    def mirrored() -> bool:
        v = fleet.bans().get(key)
        return v is not None and decode_ban(v).decision_id == "m-test-1"

    fleet.wait_for("manual ban mirrored to bans", mirrored, 20)
    ban = decode_ban(fleet.bans()[key])  # type: ignore[arg-type]
    assert ban.origin == "manual" and ban.by == "alice"
    fleet.fail(ip, 20)  # banned by hand: evidence only
    unban = Decision(
        id="m-test-2", action="unban", ip=ip, jail="amps", at=utcnow(), origin="manual", by="bob"
    )
    fleet.produce_raw(ip.encode(), encode(unban), fleet.topics.decisions)
    fleet.wait_for("tombstone after manual unban", lambda: fleet.ban_records(key)[-1:] == [None], 20)
    # after the unban, counting starts afresh
    fleet.fail(ip, 20)
    (auto,) = [d for d in fleet.wait_decision(ip, count=2) if d.origin == "auto"]
    assert auto.failures == 20 and auto.ban_count == 2
    assert [d.id for d in fleet.decisions(ip)] == ["m-test-1", "m-test-2", auto.id]  # nothing re-issued


def test_resent_lines_are_counted_once(fleet) -> None:  # type: ignore[no-untyped-def]
    ip = "203.0.113.40"
    ids = fleet.line_ids("h1", 15)
    ts = utcnow()
    fleet.ship(ip, "h1", ids, ts=ts)
    fleet.ship(ip, "h1", ids, ts=ts)  # a restarted shipper resends the same lines
    fleet.ship(ip, "h1", ids[:10], ts=ts)
    probe = "203.0.113.41"
    fleet.fail(probe, 20)
    fleet.wait_decision(probe)
    assert fleet.decisions(ip) == []
    fleet.fail(ip, 5, host="h2")
    (d,) = fleet.wait_decision(ip)
    assert d.failures == 20


def test_bad_input_is_counted_and_skipped(fleet) -> None:  # type: ignore[no-untyped-def]
    ok_line = Line(id="x:1", ts=utcnow(), port=1, client="c", reason="auth")
    bad = [
        (b"1.2.3.4", b"not json at all"),
        (b"1.2.3.4", b'{"v": 1, "host": "h"}'),  # wrong schema
        (b"1.2.3.4", encode(EventBatch(host="h", ip="not-an-ip", lines=[ok_line]))),
        (b"not-an-ip", b"\xff\xfe\x00garbage"),
        (None, None),
        (b"1.2.3.4", b'{"v": 1, "host": "h", "ip": "1.2.3.4", "lines": [' + b"1," * 200_000 + b"1]}"),
        (b"1.2.3.4", encode(EventBatch(host="h", ip="1.2.3.4", lines=[]))),
    ]
    for key, value in bad:
        fleet.produce_raw(key, value)
    # a huge raw line is accepted but bounded in the state and the evidence
    huge = EventBatch(
        host="h1",
        ip="203.0.113.50",
        lines=[
            Line(id=f"huge:{i}", ts=utcnow(), port=1, client="c", reason="auth", raw="A" * 300_000)
            for i in range(2)
        ],
    )
    fleet.produce_raw(b"203.0.113.50", encode(huge))
    fleet.fail("203.0.113.50", 18)
    (d,) = fleet.wait_decision("203.0.113.50")
    assert all(len(e) <= 512 for e in d.evidence)
    text = fleet.metrics()
    skipped = sum(
        float(v)
        for v in re.findall(r'fleet2ban_processor_bad_records_total\{topic="events",why="\w+"\} (\S+)', text)
    )
    assert skipped >= len(bad)
    assert all(w.poll() is None for w in fleet.workers), fleet.logs()


def test_the_worker_sends_heartbeats_with_its_partitions_lag_and_decisions(fleet) -> None:  # type: ignore[no-untyped-def]
    from fleet2ban.contract import Heartbeat, decode_report
    from fleet2ban.kafka import read_to_end

    fleet.ready()  # at least one decision made

    def latest() -> Heartbeat | None:
        hbs = [
            r
            for rec in read_to_end(fleet.cluster, fleet.topics.reports, timeout=10)
            if rec.value is not None
            and isinstance(r := decode_report(rec.value), Heartbeat)
            and r.role == "processor"
            and r.counters.get("decisions", 0) >= 1
        ]
        return max(hbs, key=lambda h: h.at) if hbs else None

    hb = fleet.wait_for("a processor heartbeat after a decision", latest, 30, every=0.5)
    assert hb.counters["partitions"] == 3 and hb.counters["records"] >= 1
    assert hb.lag is not None and hb.lag >= 0 and hb.started_at is not None


def test_the_worker_writes_with_an_idempotent_producer(fleet, local_kafka) -> None:  # type: ignore[no-untyped-def]
    """A send retried after a leader died writes no second copy of a decision (issue 15): every batch the
    worker wrote to decisions, bans and its changelog carries a producer id (the broker's InitProducerId
    answer; a batch of a producer without idempotence carries -1)."""
    if local_kafka is None:
        pytest.skip("reads the segments of the local cluster")
    fleet.ready()  # a decision, its bans record and its target's state written
    changelog = f"{fleet.prefix}fleet2ban-processor-targets-changelog"
    ids = {
        topic: set(fleet.wait_for(f"batches of {topic} on disk", lambda t=topic: local_kafka.producer_ids(t)))
        for topic in (fleet.topics.decisions, fleet.topics.bans, changelog)
    }
    # bans and the changelog: the worker's one producer only; decisions: also the test's manual ones
    (worker,) = ids[fleet.topics.bans]
    assert worker >= 0 and ids[changelog] == {worker} and worker in ids[fleet.topics.decisions], ids
    assert all(i >= 0 for i in ids[fleet.topics.decisions]), ids
