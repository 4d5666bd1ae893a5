"""Sustained attack: the dev fleet (3 hosts) under a flood of failure lines from 10,000 addresses.

The benchmark plays AMPS: it appends ``07-0013 ... disconnected: auth`` lines straight into the three
hosts' ban logs (thousands of real connections per second are not possible here) at ``--rate`` lines/s
for ``--duration`` seconds (bounded in time and in count). A share of the lines (``--burst-share``)
are bursts: one address of the pool fails ``maxretry`` times within about 0.2 s, spread over the hosts,
so each burst must become one fleet-wide ban; the rest fail from random addresses of the pool (each
address far below maxretry per findtime). After the writing it waits (at most ``--drain`` s) for the
pipeline to catch up, then reports:

- throughput, as ratios to the offered load (the reference measured in the same run): lines written,
  lines shipped (``events``), lines processed (from decision timing: a ban decided at record time R for a
  line written at A means the processor had reached the lines written by A; the slope of that over R is
  its rate), bans decided vs bursts written, bans applied (enforcer reports) and present (``ipset save`` in each namespace) per host;
- decision lag (decision record time minus the triggering line's event time = when it was written),
  per 10 s of the run, and the processor's backlog in lines: bounded or growing;
- RSS and CPU of every component over time.

    python -m bench sustained [--rate 5000] [--duration 60] [--addresses 10000] [--burst-share 0.1]
                              [--drain 120] [--bantime 3600] [--json PATH]

Needs root (namespaces, ipset).
"""

from __future__ import annotations

import argparse
import bisect
import ipaddress
import json
import math
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.fleetbench import (
    AmpsLog,
    Rec,
    component_pids,
    cpu_seconds,
    describe_machine,
    failure_line,
    ms,
    percentile,
    rss_mb,
    table,
    wait_fleet_ready,
)
from fleet2ban.audit.reader import Source, TopicReader
from fleet2ban.contract import (
    ContractError,
    Heartbeat,
    Report,
    decode_decision,
    decode_report,
)
from fleet2ban.dev import netns
from fleet2ban.dev.amps_sim import amps_timestamp
from fleet2ban.dev.fleet import DevFleet, DevOptions
from fleet2ban.kafka import Cluster

POOL_NET = ipaddress.IPv4Network("198.18.0.0/15")  # RFC 2544 benchmarking range
WARM_UP_IP = ipaddress.IPv4Address("198.19.255.254")  # in the range, beyond any pool (< 131,000)
TICK_S = 0.01
ROLL_BYTES = 1_000_000


def pool(n: int) -> list[str]:
    base = int(POOL_NET.network_address)
    return [str(ipaddress.IPv4Address(base + 1 + i)) for i in range(n)]


# --------------------------------------------------------------------------------------- the writer


@dataclass
class Burst:
    ip: str
    left: int
    host: int
    started: float = 0.0
    done: float = math.nan  # when its last line was flushed


@dataclass
class WriterStats:
    lines: int = 0
    per_host: list[int] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    bursts: list[Burst] = field(default_factory=list)
    late_ticks: int = 0
    rolls: int = 0
    progress: list[tuple[float, int]] = field(default_factory=list)  # (time, lines written so far)

    def written_by(self, t: float) -> int:
        """Lines written at or before wall time ``t``."""
        i = bisect.bisect_right(self.progress, (t, 1 << 62)) - 1
        return self.progress[i][1] if i >= 0 else 0


def write_flood(
    logs: list[AmpsLog],
    addresses: list[str],
    rate: float,
    duration: float,
    max_lines: int,
    burst_share: float,
    maxretry: int,
    stop: threading.Event,
    seed: int = 8,
) -> WriterStats:
    """Append failure lines at ``rate``/s for ``duration`` s (at most ``max_lines``); one write per host
    per tick (10 ms), lines stamped with the time of their tick (AMPS's format, via amps_timestamp)."""
    rnd = random.Random(seed)
    burst_pool = addresses[:]
    rnd.shuffle(burst_pool)
    st = WriterStats(per_host=[0] * len(logs))
    active: deque[Burst] = deque()
    burst_credit = 0.0
    n_hosts = len(logs)
    st.started = start = time.time()
    next_tick = start
    seq = 0
    planned = min(max_lines, int(rate * duration))
    while not stop.is_set() and st.lines < planned:
        now = time.time()
        # the last tick writes whatever the schedule still owes, so a run writes exactly rate x duration
        last = now - start >= duration
        due = (planned if last else min(planned, int(rate * (now - start + TICK_S)))) - st.lines
        if due > 0:
            stamp = amps_timestamp(datetime.fromtimestamp(now, UTC))
            bufs: list[list[str]] = [[] for _ in range(n_hosts)]
            counts = [0] * n_hosts
            burst_credit += due * burst_share
            n_burst = int(burst_credit)
            burst_credit -= n_burst
            finished: list[Burst] = []
            # burst lines: one per active burst per tick (so a burst takes about maxretry ticks)
            emitted = 0
            cycle = list(active)
            served: list[Burst] = []
            idx = 0
            while emitted < n_burst:
                if idx < len(cycle):
                    b = cycle[idx]
                    idx += 1
                elif burst_pool:
                    b = Burst(burst_pool.pop(), maxretry, rnd.randrange(n_hosts), now)
                    st.bursts.append(b)
                else:
                    break
                seq += 1
                h = b.host % n_hosts
                b.host += 1
                bufs[h].append(
                    f"{stamp} [26] info: 07-0013 client[burst-{seq}]({b.ip}:{40000 + seq % 20000}) "
                    "disconnected: auth.\n"
                )
                counts[h] += 1
                b.left -= 1
                emitted += 1
                (finished if b.left == 0 else served).append(b)
            active = deque(cycle[idx:] + served)
            for _ in range(due - emitted):
                seq += 1
                h = rnd.randrange(n_hosts)
                ip = addresses[rnd.randrange(len(addresses))]
                bufs[h].append(
                    f"{stamp} [26] info: 07-0013 client[bg-{seq}]({ip}:{40000 + seq % 20000}) "
                    "disconnected: auth.\n"
                )
                counts[h] += 1
            t_written = now
            for h, lines in enumerate(bufs):
                if lines:
                    t_written = logs[h].write("".join(lines).encode(), len(lines))
                    st.per_host[h] += counts[h]
            st.lines += sum(counts)
            st.progress.append((t_written, st.lines))
            for b in finished:
                b.done = t_written
        next_tick += TICK_S
        pause = next_tick - time.time()
        if pause > 0:
            time.sleep(pause)
        else:
            st.late_ticks += 1
            next_tick = time.time()
    st.ended = time.time()
    st.rolls = sum(lg.rolls for lg in logs)
    return st


# -------------------------------------------------------------------------------------- the monitor


@dataclass
class Sample:
    t: float
    rss: dict[str, float]
    cpu: dict[str, float]


class Monitor:
    """Every ``interval`` s: RSS and CPU time of each component of the fleet (from /proc)."""

    def __init__(self, fleet: DevFleet, interval: float = 1.0) -> None:
        self.fleet = fleet
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)

    def start(self) -> Monitor:
        self._thread.start()
        return self

    def sample(self) -> Sample:
        pids = component_pids(self.fleet)
        return Sample(
            time.time(), {k: rss_mb(p) for k, p in pids.items()}, {k: cpu_seconds(p) for k, p in pids.items()}
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.samples.append(self.sample())
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


# --------------------------------------------------------------------------------------- collection


def ipset_members(ns: str) -> set[str]:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "ipset", "save"], capture_output=True, text=True, check=False
    )
    return {
        p[2]
        for line in out.stdout.splitlines()
        if (p := line.split()) and p[0] == "add" and p[1].startswith("f2b-")
    }


@dataclass
class Outcome:
    decisions: dict[str, tuple[float, float]] = field(default_factory=dict)  # ip -> (record ts, event time)
    applied: dict[str, dict[str, float]] = field(
        default_factory=lambda: defaultdict(dict)
    )  # host -> ip -> at
    shipper_hb: dict[str, list[tuple[float, dict[str, float]]]] = field(
        default_factory=lambda: defaultdict(list)
    )  # host -> [(heartbeat time, counters)]
    enforcer_hb: dict[str, dict[str, float]] = field(default_factory=dict)
    unbans: dict[str, str] = field(default_factory=dict)  # ip -> reason of its (first) unban decision
    removed: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))  # host -> ip -> why


def fold(out: Outcome, rec: Rec) -> None:
    """Add one decisions/reports record to what the run saw."""
    try:
        if rec.kind == "decisions":
            d = decode_decision(rec.value)
            if d.action == "ban" and d.origin == "auto" and d.ip not in out.decisions:
                out.decisions[d.ip] = (rec.ts, d.at.timestamp())
            elif d.action == "unban":
                out.unbans.setdefault(d.ip, d.reason or "")
        else:
            r = decode_report(rec.value)
            if isinstance(r, Report) and r.kind == "applied":
                out.applied[r.host].setdefault(r.ip, r.at.timestamp())
            elif isinstance(r, Report) and r.kind == "removed":
                out.removed[r.host].setdefault(r.ip, r.detail or "")
            elif isinstance(r, Heartbeat):
                if r.role == "shipper":
                    out.shipper_hb[r.host].append((r.at.timestamp(), r.counters))
                else:
                    out.enforcer_hb[r.host] = r.counters
    except ContractError:
        pass


class Collector:
    """The decisions and reports of the run, read incrementally by one consumer.

    Re-reading both topics from the start every few seconds made the embedded broker (whose Fetch cost
    grows with the record batches stored, and every report is a batch of its own) the bottleneck of the
    drain it was measuring."""

    def __init__(self, cluster: Cluster) -> None:
        self.out = Outcome()
        topics = cluster.topics
        sources = [Source(k, getattr(topics, k)) for k in ("decisions", "reports")]
        self.reader = TopicReader(cluster, sources, self._feed)
        self.reader.catch_up(300)

    def _feed(self, kind: str, key: bytes | None, value: bytes | None, ts: datetime | None) -> None:
        fold(self.out, Rec(kind, key, value, ts.timestamp() if ts is not None else math.nan))

    def update(self) -> Outcome:
        while self.reader.poll(0.2) > 0:
            pass
        return self.out

    def close(self) -> None:
        self.reader.close()


def shipped_lines(out: Outcome, t0: float, t1: float) -> tuple[dict[str, int], float, int]:
    """From the shippers' heartbeats (their counters of acknowledged events and records): lines shipped
    per host in all, the fleet's shipping rate between ``t0`` and ``t1``, and records shipped.

    (Reading the whole ``events`` topic back is not an option at this size: the embedded broker's fetch
    cost grows with the number of stored batches and a full read took more than 10 minutes.)"""
    per_host: dict[str, int] = {}
    records = 0
    in_window = 0.0
    for host, series in out.shipper_hb.items():
        series.sort(key=lambda x: x[0])
        last = series[-1][1]
        per_host[host] = int(last.get("events_shipped", 0))
        records += int(last.get("records_shipped", 0))

        def at(t: float, ser: list[tuple[float, dict[str, float]]] = series) -> float:
            i = bisect.bisect_right([x[0] for x in ser], t) - 1
            return ser[i][1].get("events_shipped", 0.0) if i >= 0 else 0.0

        in_window += at(t1) - at(t0)
    return per_host, in_window / max(1e-9, t1 - t0), records


# ------------------------------------------------------------------------------------------- report


def report(
    args: argparse.Namespace,
    fleet: DevFleet,
    ws: WriterStats,
    mon: list[Sample],
    out: Outcome,
    ipsets: dict[str, set[str]],
    shipped: tuple[dict[str, int], float, int],
    drain_s: float,
) -> dict[str, Any]:
    dur = ws.ended - ws.started
    per_host_shipped, ship_rate, n_records = shipped
    written_rate = ws.lines / dur if dur > 0 else math.nan
    shipped_total = sum(per_host_shipped.values())
    lines_per_record = shipped_total / n_records if n_records else math.nan
    expected = {b.ip: b for b in ws.bursts if not math.isnan(b.done)}
    decided = {ip for ip in expected if ip in out.decisions}
    # processor progress from decision timing: at record time R it had reached the lines written by A
    progress = sorted((out.decisions[ip][0], ws.written_by(out.decisions[ip][1])) for ip in decided)
    during = [p for p in progress if ws.started <= p[0] <= ws.ended] or progress
    proc_rate = math.nan
    if len(during) >= 2 and during[-1][0] > during[0][0]:
        proc_rate = (during[-1][1] - during[0][1]) / (during[-1][0] - during[0][0])
    after = [p for p in progress if p[0] > ws.ended]
    drain_rate = math.nan
    if len(after) >= 2 and after[-1][0] > after[0][0]:
        drain_rate = (after[-1][1] - after[0][1]) / (after[-1][0] - after[0][0])
    extra_bans = set(out.decisions) - set(expected)
    host_names = [h.name for h in fleet.hosts]

    print()
    rows: list[list[object]] = [
        [
            "offered: lines written/s (the reference)",
            f"{written_rate:,.0f}",
            "1.00x",
            f"target {args.rate:,.0f}/s; {ws.lines:,} lines in {dur:.1f}s; {ws.late_ticks} late ticks",
        ],
        [
            "shipped: lines acked by the broker/s (run)",
            f"{ship_rate:,.0f}",
            f"{ship_rate / written_rate:.2f}x",
            f"{shipped_total:,} of {ws.lines:,} lines shipped in all ({shipped_total / max(1, ws.lines):.3f}); "
            f"{n_records:,} records, {lines_per_record:.2f} lines/record",
        ],
        [
            "processed: lines/s (from decision timing)",
            f"{proc_rate:,.0f}",
            f"{proc_rate / written_rate:.2f}x" if not math.isnan(proc_rate) else "-",
            f"= {proc_rate / lines_per_record:,.0f} events records/s" if not math.isnan(proc_rate) else "",
        ],
        [
            "  processed after the writing stopped",
            f"{drain_rate:,.0f}" if not math.isnan(drain_rate) else "-",
            f"{drain_rate / written_rate:.2f}x" if not math.isnan(drain_rate) else "-",
            "lines/s while catching up (writer and shippers idle)"
            if not math.isnan(drain_rate)
            else "nothing left to catch up when the writing stopped",
        ],
        [
            "bans decided / bursts written",
            f"{len(decided):,}/{len(expected):,}",
            f"{len(decided) / max(1, len(expected)):.2f}x",
            f"other bans: {len(extra_bans)} (bursts cut off at the end, plus background)",
        ],
    ]
    decided_ips = set(out.decisions)
    for h in host_names:
        applied = set(out.applied.get(h, {})) & decided_ips
        present = ipsets.get(h, set()) & decided_ips
        rows.append(
            [
                f"  {h}: applied reports / in ipset",
                f"{len(applied):,} / {len(present):,}",
                f"{len(present) / max(1, len(decided_ips)):.2f}x",
                f"of {len(decided_ips):,} decided; ipset holds {len(ipsets.get(h, set())):,} entries",
            ]
        )
    for h in host_names:
        gone = decided_ips - ipsets.get(h, set())
        if gone:
            why = {ip: out.removed.get(h, {}).get(ip, "no removed report") for ip in sorted(gone)}
            unb = sum(1 for ip in gone if ip in out.unbans)
            rows.append(
                [
                    f"  {h}: decided but not in ipset",
                    len(gone),
                    "",
                    f"{unb} have an unban decision; {why}"[:200],
                ]
            )
    print(
        table(
            ["sustained attack", "value", "ratio", "notes"],
            rows,
            f"{args.rate:,.0f} failure lines/s from {args.addresses:,} addresses for {args.duration:.0f}s, 3 hosts",
        )
    )

    # decision lag per 10 s of the run
    lag_rows: list[list[object]] = []
    lags: list[tuple[float, float]] = []  # (event time, lag)
    trig: list[tuple[float, float]] = []  # (event time, record time)
    for ip in decided:
        rec_ts, at = out.decisions[ip]
        lags.append((at, rec_ts - at))
        trig.append((at, rec_ts))
    step = 10.0
    t = ws.started
    while t < ws.ended:
        xs = [lag for at, lag in lags if t <= at < t + step]
        backlog = [ws.written_by(r) - ws.written_by(at) for at, r in trig if t <= at < t + step]
        written = [b for b in expected.values() if t <= b.done < t + step]
        missed = sum(1 for b in written if b.ip not in out.decisions)
        lag_rows.append(
            [
                f"{t - ws.started:4.0f}-{t - ws.started + step:.0f}s",
                len(xs),
                missed,
                ms(percentile(xs, 50)),
                ms(percentile(xs, 95)),
                ms(max(xs, default=math.nan)),
                f"{max(backlog):,}" if backlog else "-",
            ]
        )
        t += step
    all_lags = [lag for _, lag in lags]
    enforce: dict[str, list[float]] = {}
    for h in host_names:
        got = out.applied.get(h, {})
        enforce[h] = [got[ip] - out.decisions[ip][0] for ip in decided_ips if ip in got]
    print()
    print(
        table(
            ["enforce delay (ms)", "n", "p50", "p95", "p99", "max"],
            [
                [
                    h,
                    len(xs),
                    ms(percentile(xs, 50)),
                    ms(percentile(xs, 95)),
                    ms(percentile(xs, 99)),
                    ms(max(xs, default=math.nan)),
                ]
                for h, xs in enforce.items()
            ],
            "decision record -> the host's applied report, under the flood",
        )
    )
    print()
    print(
        table(
            [
                "decision lag (ms) by trigger time",
                "bans",
                "missed",
                "p50",
                "p95",
                "max",
                "max backlog (lines)",
            ],
            lag_rows,
            "decision record time - event time of its triggering line (= when it was written)",
        )
    )
    print(
        f"drain after the writing stopped: {drain_s:.1f}s; lag over all bans p50 {ms(percentile(all_lags, 50))} ms,"
        f" p99 {ms(percentile(all_lags, 99))} ms, max {ms(max(all_lags, default=math.nan))} ms"
    )

    # RSS and CPU over time
    if mon:
        names = [k for k in mon[0].rss if not math.isnan(mon[0].rss[k])]
        picks = sorted({0, len(mon) // 4, len(mon) // 2, 3 * len(mon) // 4, len(mon) - 1})
        rss_rows: list[list[object]] = []
        for k in names:
            series = [s.rss.get(k, math.nan) for s in mon]
            run = [s for s in mon if ws.started <= s.t <= ws.ended] or mon
            c0, c1 = run[0].cpu.get(k, math.nan), run[-1].cpu.get(k, math.nan)
            cpu_pct = 100.0 * (c1 - c0) / max(1e-9, run[-1].t - run[0].t)
            aft = [s for s in mon if s.t >= ws.ended]
            cpu_after = math.nan
            if len(aft) >= 2:
                cpu_after = (
                    100.0
                    * (aft[-1].cpu.get(k, math.nan) - aft[0].cpu.get(k, math.nan))
                    / max(1e-9, aft[-1].t - aft[0].t)
                )
            rss_rows.append(
                [
                    k,
                    *(f"{series[i]:.0f}" for i in picks),
                    f"{max(series):.0f}",
                    f"{series[-1] - series[0]:+.0f}",
                    f"{cpu_pct:.0f}%",
                    "-" if math.isnan(cpu_after) else f"{cpu_after:.0f}%",
                ]
            )
        print()
        print(
            table(
                [
                    "RSS (MiB) over time",
                    *(f"t={mon[i].t - ws.started:.0f}s" for i in picks),
                    "max",
                    "growth",
                    "CPU in run",
                    "CPU after",
                ],
                rss_rows,
                "sampled every second from /proc; CPU = share of one core while writing / while draining",
            )
        )
    return {
        "written": ws.lines,
        "written_rate": written_rate,
        "shipped": shipped_total,
        "ship_rate": ship_rate,
        "processed_lines_rate": proc_rate,
        "drain_lines_rate": drain_rate,
        "missing_from_ipset": {h: sorted(decided_ips - ipsets.get(h, set())) for h in host_names},
        "lines_per_record": lines_per_record,
        # each shipper's last heartbeat counters: where lines are when fewer were shipped than written
        "shippers": {h: series[-1][1] for h, series in sorted(out.shipper_hb.items()) if series},
        "bursts": len(expected),
        "decided": len(decided),
        "other_bans": len(extra_bans),
        "applied": {h: len(set(out.applied.get(h, {})) & decided_ips) for h in host_names},
        "in_ipset": {h: len(ipsets.get(h, set()) & decided_ips) for h in host_names},
        "lag": {
            "p50": percentile(all_lags, 50),
            "p99": percentile(all_lags, 99),
            "max": max(all_lags, default=math.nan),
        },
        "drain_s": drain_s,
        "enforce": {h: {"p50": percentile(xs, 50), "p99": percentile(xs, 99)} for h, xs in enforce.items()},
        "rss": [{"t": s.t - ws.started, **s.rss} for s in mon],
        "machine": describe_machine(),
    }


# --------------------------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    reason = netns.unavailable_reason()
    if reason:
        raise SystemExit(f"sustained needs network namespaces: {reason}")
    with DevFleet(fleet_options(args)) as fleet:
        for line in fleet.describe():
            print(line)
        return run_on(fleet, args)


def fleet_options(args: argparse.Namespace) -> DevOptions:
    # The benchmark is the AMPS writer of the failure lines, so it rolls the logs over itself (at ~1 MB,
    # as the seed's logging target): a second writer renaming the file under it would race its writes.
    return DevOptions(
        hosts=3,
        attackers=0,
        bantime=float(args.bantime),
        maxretry=args.maxretry,
        sim_roll_bytes=1 << 40,
        partitions=args.partitions,
        backend="ipset",  # the bench reads each host's set back with `ipset save`
        kafka_nodes=3,
    )


def run_on(fleet: DevFleet, args: argparse.Namespace) -> dict[str, Any]:
    """The measurement on a started fleet (an experiment may swap a component first)."""
    assert fleet.cluster is not None
    wait_fleet_ready(fleet)
    addresses = pool(args.addresses)
    logs = [AmpsLog(h.log_path, roll_bytes=ROLL_BYTES) for h in fleet.hosts]
    warm_s, warm_lines = warm_up(fleet.cluster, logs, args.maxretry)
    print(f"warm-up: a first ban was decided {warm_s:.1f}s after its lines (the processor is consuming)")
    mon = Monitor(fleet).start()
    stop = threading.Event()
    try:
        print(f"writing {args.rate:,.0f} lines/s for {args.duration:.0f}s ...", flush=True)
        ws = write_flood(
            logs,
            addresses,
            args.rate,
            args.duration,
            int(args.rate * args.duration),
            args.burst_share,
            args.maxretry,
            stop,
        )
        print(
            f"wrote {ws.lines:,} lines in {ws.ended - ws.started:.1f}s ({len(ws.bursts):,} bursts); draining"
            f" (at most {args.drain:.0f}s) ...",
            flush=True,
        )
        expected = {b.ip for b in ws.bursts if not math.isnan(b.done)}
        drain_start = time.monotonic()
        collector = Collector(fleet.cluster)
        out = collector.update()
        while time.monotonic() - drain_start < args.drain:
            ipsets = {h.name: ipset_members(h.netns) for h in fleet.hosts if h.netns}
            decided = expected & set(out.decisions)
            if len(decided) == len(expected) and all(decided <= s for s in ipsets.values()):
                break
            if int(time.monotonic() - drain_start) % 20 < 2:
                cover = min((len(decided & s) for s in ipsets.values()), default=0)
                print(
                    f"  +{time.monotonic() - drain_start:4.0f}s: {len(decided):,}/{len(expected):,} bans decided,"
                    f" {cover:,} in every host's ipset",
                    flush=True,
                )
            time.sleep(2.0)
            out = collector.update()
        drain_s = time.monotonic() - drain_start
    finally:
        stop.set()
        mon.stop()
        for lg in logs:
            lg.close()
    ipsets = {h.name: ipset_members(h.netns) for h in fleet.hosts if h.netns}
    out = collector.update()
    deadline = time.monotonic() + 30.0  # the shippers' next heartbeats count the last acknowledgements
    while (
        sum(shipped_lines(out, ws.started, ws.ended)[0].values()) < ws.lines and time.monotonic() < deadline
    ):
        time.sleep(1.0)
        out = collector.update()
    collector.close()
    # the warm-up is not part of the run: its ban and its lines are left out of every figure
    warm = str(WARM_UP_IP)
    out.decisions.pop(warm, None)
    for got in out.applied.values():
        got.pop(warm, None)
    ipsets = {h: members - {warm} for h, members in ipsets.items()}
    per_host, rate, records = shipped_lines(out, ws.started, ws.ended)
    for h, n in zip(fleet.hosts, warm_lines, strict=True):
        per_host[h.name] = per_host.get(h.name, 0) - n
    return report(args, fleet, ws, mon.samples, out, ipsets, (per_host, rate, records), drain_s)


def warm_up(
    cluster: Cluster, logs: list[AmpsLog], maxretry: int, timeout: float = 90.0
) -> tuple[float, list[int]]:
    """Ban one address outside the pool (its lines spread over the hosts) and wait for its decision;
    return how long that took and how many lines each host's log got.

    The shippers' and enforcers' heartbeats say they are up; only a decision says that the processor
    joined its group and consumes. A flood started before that measures the worker's start-up, not
    whether it keeps up."""
    ip = str(WARM_UP_IP)
    t0 = time.time()
    per_log = [0] * len(logs)
    for i in range(maxretry):
        per_log[i % len(logs)] += 1
        logs[i % len(logs)].write(failure_line(ip, f"warm-up-{i}", at=time.time()))
    collector = Collector(cluster)
    try:
        deadline = time.monotonic() + timeout
        while ip not in collector.update().decisions:
            if time.monotonic() > deadline:
                raise SystemExit(f"no decision for the warm-up address {ip} within {timeout:.0f}s")
        return collector.out.decisions[ip][0] - t0, per_log
    finally:
        collector.close()


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench sustained",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--rate", type=float, default=5000.0, help="failure lines/s over all hosts (default 5000)"
    )
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of writing (default 60)")
    ap.add_argument(
        "--addresses", type=int, default=10_000, help="distinct client addresses (default 10,000)"
    )
    ap.add_argument("--burst-share", type=float, default=0.1, help="share of lines in ban-worthy bursts")
    ap.add_argument("--drain", type=float, default=120.0, help="wait at most N s for the pipeline afterwards")
    ap.add_argument(
        "--bantime", type=int, default=3600, help="long enough that no ban expires during the run"
    )
    ap.add_argument("--maxretry", type=int, default=20)
    ap.add_argument(
        "--partitions",
        type=int,
        default=DevOptions.partitions,
        help="partitions per topic (dev fleet default)",
    )
    ap.add_argument("--json", type=Path, help="also write the figures to this file")
    return ap.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    res = run(args)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
