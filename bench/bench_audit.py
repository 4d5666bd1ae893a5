"""Audit queries: `bans history` (one hour of 1,000,000 decisions) and `bans list` (100,000 active bans).

Against a fresh local 3-node Apache Kafka. `history`: decisions spread evenly over 30 days (record timestamps =
decision time); the query seeks by time (offsets_for_times) and folds one hour, for the last hour and for
an hour in the middle; the reference is a full scan of the same topic in the same run. `list`: 100,000
bans in force on `bans` plus, per enforcer, an `applied` report for every ban (five minutes old) and
heartbeats as the enforcer sends them above 1,000 keys (a truncated list, the digest of its applied set,
its `bans` offsets); the reference is a raw confluent-kafka read of the same records without decoding.
Also timed: the same answer from every applied report (the path taken before heartbeats had digests, and
the fallback), which must agree, and the fallback when one enforcer misses one ban, which must name it.
Target: each query under 2 s.

    python -m bench audit [--decisions N] [--bans N] [--enforcers N] [--partitions N] [--cli]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from confluent_kafka import Producer

from bench._kafka import bench_cluster
from fleet2ban.audit import queries
from fleet2ban.audit.reader import load_coverage_view, load_view, read_decisions
from fleet2ban.contract import (
    BanState,
    Decision,
    Heartbeat,
    Report,
    applied_digest,
    ban_key,
    digest_item,
    encode,
    utcnow,
)
from fleet2ban.kafka import Cluster, ensure_topics, producer_config, read_to_end, resolve
from fleet2ban.settings import KafkaSettings

TARGET_S = 2.0


def _ip(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def _producer(cluster: Cluster) -> Producer:
    return Producer(
        {
            **producer_config(cluster, linger_ms=50),
            "batch.num.messages": 10000,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 500_000,
            "log_level": 0,
        }
    )


def _produce(p: Producer, topic: str, key: bytes, value: bytes | None, ts_ms: int | None = None) -> None:
    while True:
        try:
            if ts_ms is None:
                p.produce(topic, key=key, value=value)
            else:
                p.produce(topic, key=key, value=value, timestamp=ts_ms)
            return
        except BufferError:
            p.poll(0.05)


def fill_decisions(cluster: Cluster, n: int, days: float = 30.0) -> None:
    now = utcnow()
    start = now - timedelta(days=days)
    step = days * 86400 / n
    p = _producer(cluster)
    topic = cluster.topics.decisions
    for i in range(n):
        at = start + timedelta(seconds=i * step)
        ip = _ip(i % 2_000_000)
        d = Decision(
            id=f"b-{i:012x}",
            action="ban",
            ip=ip,
            jail="amps",
            at=at,
            ports=[9007],
            expires_at=at + timedelta(seconds=120),
            failures=20,
            first_failure_at=at - timedelta(seconds=3),
            hosts=["amps1", "amps2"],
            ban_count=1,
            evidence=[
                f"2026-11-25T08:00:00.0000000-08:00 [26] info: 07-0013 client[x]({ip}:1) disconnected: auth."
            ],
        )
        _produce(p, topic, ip.encode(), encode(d), int(at.timestamp() * 1000))
        if i % 20000 == 0:
            p.poll(0)
    p.flush(120)


def fill_bans(cluster: Cluster, n: int, enforcers: int) -> dict[str, Any]:
    """``n`` bans in force, and per enforcer an ``applied`` report for each (record time = its ``at``, as an
    enforcer writes them) and three heartbeats as the enforcer sends them: the applied list cut at 1,000
    keys, the digest of all it has applied, the ``bans`` offsets it had read. Returns what
    :func:`break_one` needs."""
    now = utcnow()
    p = _producer(cluster)
    t = cluster.topics
    ends: dict[int, int] = {}

    def delivered(err: Any, msg: Any) -> None:
        if err is None:
            ends[msg.partition()] = max(ends.get(msg.partition(), 0), msg.offset() + 1)

    keys = []
    items = []
    for i in range(n):
        ip = _ip(i)
        at = now - timedelta(seconds=600 - i * 300 / n)
        st = BanState(
            decision_id=f"b-{i:012x}",
            ip=ip,
            jail="amps",
            at=at,
            ports=[9007],
            expires_at=at + timedelta(days=1),
            failures=20,
            hosts=["amps1"],
        )
        key = ban_key("amps", ip)
        keys.append(key)
        items.append(digest_item(key, st.expires_at))
        while True:
            try:
                p.produce(t.bans, key=key.encode(), value=encode(st), on_delivery=delivered)
                break
            except BufferError:
                p.poll(0.05)
    p.flush(120)
    digest = applied_digest(items)
    applied_at = now - timedelta(seconds=300)
    started = now - timedelta(seconds=900)
    for e in range(enforcers):
        host = f"enf{e}"
        for i in range(len(keys)):
            r = Report(
                host=host,
                kind="applied",
                jail="amps",
                ip=_ip(i),
                at=applied_at,
                decision_id=f"b-{i:012x}",
                backend="ipset",
            )
            _produce(p, t.reports, host.encode(), encode(r), int(applied_at.timestamp() * 1000))
        for k in range(3):
            hb = heartbeat(host, now - timedelta(seconds=10 - 5 * k), started, keys, digest, ends)
            _produce(p, t.reports, host.encode(), encode(hb), int(hb.at.timestamp() * 1000))
    p.flush(120)
    return {"keys": keys, "items": items, "ends": ends, "started": started}


def heartbeat(
    host: str, at: Any, started: Any, keys: list[str], digest: str, ends: dict[int, int]
) -> Heartbeat:
    return Heartbeat(
        host=host,
        role="enforcer",
        at=at,
        instance="ipset",
        started_at=started,
        interval_s=5.0,
        counters={"active": float(len(keys))},
        applied=keys[:1000],
        applied_total=len(keys),
        applied_digest=digest,
        bans_offsets=dict(ends),
    )


def break_one(cluster: Cluster, filled: dict[str, Any]) -> str:
    """A newer heartbeat from enf0 whose digest lacks the last ban (a host missing one ban), and the
    ``removed`` report that says so: ``bans list`` must fall back to the reports and name enf0."""
    keys, items = filled["keys"], filled["items"]
    p = _producer(cluster)
    now = utcnow()
    gone: str = keys[-1]
    rep = Report(host="enf0", kind="removed", jail="amps", ip=gone.split("|")[1], at=now, backend="ipset")
    _produce(p, cluster.topics.reports, b"enf0", encode(rep))
    hb = heartbeat("enf0", now, filled["started"], keys[:-1], applied_digest(items[:-1]), filled["ends"])
    _produce(p, cluster.topics.reports, b"enf0", encode(hb))
    p.flush(30)
    return gone


def timed(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def raw_count(cluster: Cluster, topic: str) -> int:
    return sum(1 for _ in read_to_end(cluster, topic, timeout=600))


def cli_seconds(cluster: Cluster, args: list[str]) -> float:
    env = {**os.environ, "FLEET2BAN_KAFKA__BOOTSTRAP_SERVERS": cluster.bootstrap}
    t = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "fleet2ban.cli.main", *args, "--json"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - t


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench audit")
    ap.add_argument("--decisions", type=int, default=1_000_000)
    ap.add_argument("--bans", type=int, default=100_000)
    ap.add_argument("--enforcers", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument(
        "--cli", action="store_true", help="also time the CLI as a process (python start-up included)"
    )
    args = ap.parse_args(argv)
    rows: list[tuple[str, str, str, str]] = []
    failed = False
    with bench_cluster() as broker:
        cluster = resolve(
            KafkaSettings(
                bootstrap_servers=broker.bootstrap,
                partitions=args.partitions,
                replication_factor=broker.replication_factor,
            )
        )
        ensure_topics(cluster)

        # ------------------------------------------------------------------------------- history
        t = time.perf_counter()
        fill_decisions(cluster, args.decisions)
        print(f"wrote {args.decisions:,} decisions in {time.perf_counter() - t:.1f}s", file=sys.stderr)
        ref_s, ref_n = timed(lambda: len(read_decisions(cluster, None, None, timeout=600)), repeat=1)
        rows.append(("history: full scan (reference)", f"{ref_n:,}", f"{ref_s:.3f}", "1.00"))
        now = utcnow()
        for label, end in (("last hour", now), ("an hour 15 days ago", now - timedelta(days=15))):
            start = end - timedelta(hours=1)

            def q(start: Any = start, end: Any = end) -> list[Decision]:
                return queries.decisions_in_range(read_decisions(cluster, start, end), start, end)

            s, found = timed(q)
            failed |= s >= TARGET_S
            rows.append((f"history: {label}", f"{len(found):,}", f"{s:.3f}", f"{s / ref_s:.3f}"))
        if args.cli:
            s = cli_seconds(cluster, ["bans", "history", "--since", "1h"])
            rows.append(("history: CLI process, last hour", "", f"{s:.3f}", f"{s / ref_s:.3f}"))

        # ---------------------------------------------------------------------------------- list
        t = time.perf_counter()
        filled = fill_bans(cluster, args.bans, args.enforcers)
        print(
            f"wrote {args.bans:,} bans and {args.bans * args.enforcers:,} reports in "
            f"{time.perf_counter() - t:.1f}s",
            file=sys.stderr,
        )

        def raw() -> int:
            return raw_count(cluster, cluster.topics.bans) + raw_count(cluster, cluster.topics.reports)

        ref_s, ref_n = timed(raw, repeat=1)
        rows.append(("list: raw read of bans+reports (reference)", f"{ref_n:,}", f"{ref_s:.3f}", "1.00"))

        def lst() -> list[Any]:
            n = utcnow()
            return queries.bans_in_force(load_coverage_view(cluster, n), n)

        def lst_reports() -> list[Any]:
            n = utcnow()
            return queries.bans_in_force(load_view(cluster, n), n)

        s, bans = timed(lst)
        failed |= s >= TARGET_S
        full = sum(1 for b in bans if not b.coverage.missing)
        rows.append(
            (
                f"list: {len(bans):,} bans, coverage {full:,} complete",
                f"{len(bans):,}",
                f"{s:.3f}",
                f"{s / ref_s:.3f}",
            )
        )
        s, old = timed(lst_reports, repeat=1)
        assert [(b.key, b.coverage) for b in old] == [(b.key, b.coverage) for b in bans]
        rows.append(
            ("list: from every applied report (as before)", f"{len(old):,}", f"{s:.3f}", f"{s / ref_s:.3f}")
        )
        n = utcnow()
        view = load_view(cluster, n)
        s, _ = timed(lambda: queries.bans_in_force(view, n))
        rows.append(("list: fold only (view already read)", f"{len(bans):,}", f"{s:.3f}", f"{s / ref_s:.3f}"))
        if args.cli:
            s = cli_seconds(cluster, ["bans", "list"])
            rows.append(("list: CLI process --json", "", f"{s:.3f}", f"{s / ref_s:.3f}"))
        gone = break_one(cluster, filled)
        s, bans = timed(lst, repeat=1)
        named = [b.coverage.missing for b in bans if b.key == gone]
        assert named == [["enf0"]], named
        assert sum(1 for b in bans if b.coverage.missing) == 1
        rows.append(
            (
                "list: enf0 missing 1 ban (falls back to reports)",
                f"{len(bans):,}",
                f"{s:.3f}",
                f"{s / ref_s:.3f}",
            )
        )

    width = max(len(r[0]) for r in rows)
    print(f"\n{'query':<{width}}  {'records':>10}  {'seconds':>8}  {'ratio':>6}")
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:>10}  {r[2]:>8}  {r[3]:>6}")
    print(f"\ntarget: each query under {TARGET_S:g} s -> {'MISSED' if failed else 'met'}")
    return 1 if failed else 0
