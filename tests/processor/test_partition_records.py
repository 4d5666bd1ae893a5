"""Issue 21: records of many addresses of one partition (events v2), taken by the worker in one step,
decide exactly what ``fleet2ban replay`` decides over the same lines, whatever the interleaving of hosts
and addresses and however the shippers' rounds cut them."""

from __future__ import annotations

import heapq
import math
from collections import defaultdict
from dataclasses import dataclass

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fleet2ban.contract import (
    AddressLine,
    Decision,
    Event,
    EventBatch,
    EventsRecord,
    Line,
    decode_events,
    encode,
    events_partition,
    from_epoch,
)
from fleet2ban.settings import JailSettings
from processor.app import Processor
from processor.engine import Engine
from processor.policy import Output, Policy

BASE = 1_700_000_000.0  # in the past: max_future_s never applies
PARTITIONS = 3
ADDRESSES = ("10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::7", "10.0.0.4", "10.0.0.5", "10.0.0.6")
HOSTS = ("h1", "h2", "h3")
JAILS = [
    JailSettings(name="amps", reasons=["auth"], maxretry=4, findtime=5, bantime=4),
    JailSettings(name="dup", reasons=["name in use"], maxretry=2, findtime=3, bantime=-1),
]


def policy() -> Policy:
    return Policy.from_settings(JAILS, lateness=2.0)


@dataclass
class Written:
    """One line as a host wrote it: the shipper reads it in this order."""

    host: str
    ip: str
    reason: str
    id: str
    resent: bool = False


def rounds_of(lines: list[Written], cuts: list[int]) -> list[list[Written]]:
    out, i = [], 0
    for c in cuts:
        if i >= len(lines):
            break
        out.append(lines[i : i + c])
        i += c
    if i < len(lines):
        out.append(lines[i:])
    return out


def records_per_partition(rounds: list[list[Written]], max_lines: int) -> dict[int, list[list[Written]]]:
    """What the shippers send: per round, one record per (host, partition), at most ``max_lines`` lines,
    each partition's records in the order they were sent."""
    out: dict[int, list[list[Written]]] = defaultdict(list)
    for rnd in rounds:
        open_: dict[tuple[str, int], list[Written]] = {}
        for w in rnd:
            k = (w.host, events_partition(w.ip, PARTITIONS, 64))
            rec = open_.setdefault(k, [])
            rec.append(w)
            if len(rec) >= max_lines:
                out[k[1]].append(open_.pop(k))
        for (_, part), rec in open_.items():
            out[part].append(rec)
    return out


def norm(decisions: list[Decision]) -> list[Decision]:
    return sorted(decisions, key=lambda d: (d.ip, d.jail, d.at, d.action, d.id))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    writes=st.lists(
        st.tuples(
            st.sampled_from(HOSTS),
            st.sampled_from(ADDRESSES[:4]),
            st.sampled_from(("auth", "auth", "auth", "name in use", "connection closed")),
            st.booleans(),
        ),
        min_size=6,
        max_size=80,
    ),
    cuts=st.lists(st.integers(1, 12), max_size=40),
    max_lines=st.integers(1, 6),
    steps=st.lists(st.sampled_from((0.0, 0.05, 0.3, 0.3, 1.0, 4.5)), min_size=1, max_size=20),
    order=st.randoms(use_true_random=False),
    old_shape=st.booleans(),
)
def test_records_per_partition_decide_exactly_what_replay_decides(
    writes: list[tuple[str, str, str, bool]],
    cuts: list[int],
    max_lines: int,
    steps: list[float],
    order: object,
    old_shape: bool,
) -> None:
    import random

    assert isinstance(order, random.Random)
    # the hosts' logs interleaved in any order; now and then a restarted shipper resends a line (same id)
    written: list[Written] = []
    for n, (host, ip, reason, resend) in enumerate(writes):
        mine = [w for w in written if w.host == host and not w.resent]
        if resend and mine:
            w = order.choice(mine)
            written.append(Written(host, w.ip, w.reason, w.id, resent=True))
        else:
            written.append(Written(host, ip, reason, f"{host}:f:{n}"))
    per_part = records_per_partition(rounds_of(written, cuts), max_lines)
    # the partitions' records reach the worker in any interleaving (each partition's in order)
    queues = {p: list(recs) for p, recs in per_part.items()}
    delivered: list[tuple[int, list[Written]]] = []
    while queues:
        p = order.choice(sorted(queues))
        delivered.append((p, queues[p].pop(0)))
        if not queues[p]:
            del queues[p]
    # event time follows the order in which lines reach the worker (a resent line keeps its first time;
    # strictly increasing, so that replay's merge by time meets them in the same order)
    ts: dict[str, float] = {}
    t = BASE
    for k, (_, rec) in enumerate(delivered):
        for w in rec:
            if w.id not in ts:
                t += steps[k % len(steps)] + 0.001
                ts[w.id] = t

    def line(w: Written) -> AddressLine:
        return AddressLine(w.ip, w.id, from_epoch(ts[w.id]), 1024, "c", w.reason, f"raw {w.id}")

    # the worker: one step per record
    proc = Processor(policy(), {}, partitions=PARTITIONS)
    got: list[Output] = []
    for p, rec in delivered:
        host = rec[0].host
        if old_shape and len({w.ip for w in rec}) == 1:  # a v1 shipper's record, read during an upgrade
            value = encode(EventBatch(host=host, ip=rec[0].ip, lines=[_v1(line(w)) for w in rec]))
        else:
            value = encode(EventsRecord(host=host, lines=[line(w) for w in rec]))
        assert {events_partition(w.ip, PARTITIONS, 64) for w in rec} == {p}
        proc.on_events_record(rec[0].ip.encode(), value, got, partition=p)
    proc.tick(math.inf, lambda key: True, got)

    # fleet2ban replay: each host's log (in event-time order) merged by event time, one line at a time
    logs: dict[str, list[Event]] = defaultdict(list)
    for w in written:
        if not w.resent:
            logs[w.host].append(
                Event(w.host, w.ip, w.id, from_epoch(ts[w.id]), 1024, "c", w.reason, f"raw {w.id}")
            )
    engine = Engine(policy())
    want: list[Output] = []
    merged = heapq.merge(*(sorted(evs, key=lambda e: e.ts) for evs in logs.values()), key=lambda e: e.ts)
    for ev in merged:
        engine.feed((ev,), want)
    engine.advance(math.inf, want)

    assert norm([o.decision for o in got]) == norm([o.decision for o in want])
    event(f"bans: {min(3, sum(o.decision.action == 'ban' for o in got))}+")


def _v1(ln: AddressLine) -> Line:
    return Line(id=ln.id, ts=ln.ts, port=ln.port, client=ln.client, reason=ln.reason, raw=ln.raw)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lines=st.lists(
        st.tuples(
            st.sampled_from(HOSTS),
            st.sampled_from(ADDRESSES[:4]),
            st.sampled_from(("auth", "name in use")),
            st.floats(-3.0, 3.0),  # out of order across hosts, some beyond the lateness bound
        ),
        min_size=1,
        max_size=60,
    ),
    cuts=st.lists(st.integers(1, 10), max_size=30),
)
def test_a_record_is_the_core_over_its_lines_in_order(
    lines: list[tuple[str, str, str, float]], cuts: list[int]
) -> None:
    """Late and out-of-order lines too: a record of many addresses is exactly the core fed its lines one
    by one in the record's order (the replay engine's loop)."""
    evs = [
        Event(h, ip, f"{h}:{i}", from_epoch(BASE + i * 0.4 + jitter), 1, "c", reason, "")
        for i, (h, ip, reason, jitter) in enumerate(lines)
    ]
    proc = Processor(policy(), {}, partitions=1)
    got: list[Output] = []
    i = 0
    for c in [*cuts, len(evs)]:
        chunk = evs[i : i + c]
        i += c
        for host in sorted({e.host for e in chunk}):
            mine = [e for e in chunk if e.host == host]
            value = encode(EventsRecord(host=host, lines=[_line(e) for e in mine]))
            assert [e.id for e in decode_events(value)] == [e.id for e in mine]
            proc.on_events_record(mine[0].ip.encode(), value, got, partition=0)
        if i >= len(evs):
            break
    fed = [e for c in _chunks(evs, cuts) for h in sorted({e.host for e in c}) for e in c if e.host == h]
    engine = Engine(policy())
    want: list[Output] = []
    for ev in fed:
        n = len(want)
        engine.policy.process(engine._get, engine._put, ev.ip, (ev,), want)
        assert len(want) >= n
    assert [o.decision for o in got] == [o.decision for o in want]
    event(f"bans: {min(3, sum(o.decision.action == 'ban' for o in got))}+")


def _line(e: Event) -> AddressLine:
    return AddressLine(e.ip, e.id, e.ts, e.port, e.client, e.reason, e.raw)


def _chunks(evs: list[Event], cuts: list[int]) -> list[list[Event]]:
    out, i = [], 0
    for c in [*cuts, len(evs)]:
        out.append(evs[i : i + c])
        i += c
        if i >= len(evs):
            break
    return out


def test_lines_of_another_partition_are_refused_and_the_rest_counted() -> None:
    proc = Processor(Policy.from_settings([JailSettings(maxretry=2, findtime=10)], 5.0), {}, partitions=3)
    mine = next(ip for ip in ADDRESSES if events_partition(ip, 3, 64) == 0)
    other = next(ip for ip in ADDRESSES if events_partition(ip, 3, 64) != 0)
    rec = EventsRecord(
        host="h1",
        lines=[
            AddressLine(ip, f"h1:{i}", from_epoch(BASE + i), 1, "c", "auth")
            for i, ip in enumerate((mine, other, mine, other))
        ],
    )
    out: list[Output] = []
    proc.on_events_record(mine.encode(), encode(rec), out, partition=0)
    assert [(o.decision.action, o.decision.ip, o.decision.failures) for o in out] == [("ban", mine, 2)]
    assert other not in proc.live


def test_the_addresses_of_a_v6_prefix_share_its_partition_and_are_counted_together() -> None:
    # a jail counting IPv6 clients by /64: failures from many addresses of one /64 arrive in one partition
    # (the shippers put them there), where the worker owning it counts them as one target
    jail = JailSettings(name="amps", reasons=["auth"], maxretry=6, findtime=10, bantime=60, ban_prefix_v6=64)
    proc = Processor(Policy.from_settings([jail], 5.0), {}, partitions=6, prefix_v6=64)
    addrs = [f"2001:db8:0:7::{n:x}" for n in range(1, 7)] + ["2001:db8:0:7:ffff:ffff:ffff:fffe"]
    parts = {events_partition(a, 6, 64) for a in addrs}
    assert len(parts) == 1, "one /64, one partition"
    (part,) = parts
    assert {events_partition(a, 6, 128) for a in addrs} != parts, "by address they would spread"
    assert proc.partition_of("2001:db8:0:7::/64") == part == events_partition("2001:db8:0:7::/64", 6, 64)
    rec = EventsRecord(
        host="h1",
        lines=[
            AddressLine(a, f"h1:{i}", from_epoch(BASE + i), 1, "c", "auth") for i, a in enumerate(addrs[:6])
        ],
    )
    out: list[Output] = []
    proc.on_events_record(None, encode(rec), out, partition=part)
    assert [(o.decision.action, o.decision.ip, o.decision.failures) for o in out] == [
        ("ban", "2001:db8:0:7::/64", 6)
    ]
    # IPv4 keys are the addresses themselves, whatever the prefix
    assert events_partition("10.0.0.1", 6, 64) == events_partition("10.0.0.1", 6, 128)
