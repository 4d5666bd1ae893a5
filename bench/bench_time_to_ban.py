"""Fleet-wide time-to-ban (3 hosts, real packets) vs real fail2ban on one host, in the same run.

For each attacker address in turn: 19 failure lines (``07-0013 ... disconnected: auth``) are appended to
the three hosts' ban logs (7/6/6), then, after ``--gap`` seconds, the 20th on one host. Time-to-ban is
measured from the moment that 20th line is flushed to the moment a TCP connection attempt from that
address fails on EVERY host (``bench.tcpprobe``: a non-blocking connect from the attacker's address to
each host every ``--interval-ms``). Where the time goes comes from Kafka record timestamps and report
times (same clock): tail+ship (line -> ``events`` record), process (-> ``decisions`` record), enforce
(-> the last host's ``applied`` report), observe (-> the last host refusing).

The reference, interleaved trial by trial: fail2ban 1.0 (Debian) in its own host namespace with the
seed's filter and jail (maxretry 20, findtime 10, bantime 120, port 9007, the datepattern for AMPS's
offset) and the stock iptables-ipset action, on the same kind of log writing (19 lines, gap, the 20th):
from that line to a connection attempt failing.

    python -m bench time_to_ban [--bans 60] [--warmup 2] [--gap 0.3] [--interval-ms 3] [--no-fail2ban]
                                [--f2b-backend auto] [--json PATH]

Needs root (namespaces, firewall). Targets (issue 15, on a 3-node Kafka with acks=all): fleet2ban p50 < 25 ms and
p99 < 60 ms fleet-wide.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.fleetbench import (
    AmpsLog,
    Fail2ban,
    describe_machine,
    fail2ban_unavailable_reason,
    failure_line,
    ms,
    percentile,
    ratio,
    read_topics,
    table,
    wait_fleet_ready,
)
from bench.tcpprobe import ProbeClient
from fleet2ban.contract import (
    ContractError,
    Report,
    decode_ban,
    decode_decision,
    decode_events,
    decode_report,
)
from fleet2ban.dev import netns
from fleet2ban.dev.fleet import DevFleet, DevOptions, SimHost

TARGET_P50 = 0.025
TARGET_P99 = 0.060
F2B_INDEX = 50
"""fail2ban's host is 10.200.0.50 on the dev fleet's bridge."""


@dataclass
class Trial:
    system: str  # "fleet2ban" | "fail2ban"
    index: int
    ip: str
    warmup: bool
    t0: float = math.nan  # the maxretry-th line flushed
    probe_start: float = math.nan
    first_fail: dict[str, float | None] = field(default_factory=dict)  # host name -> time
    last_ok: dict[str, float | None] = field(default_factory=dict)
    probes: int = 0
    # filled in from the topics (fleet2ban) or fail2ban's log
    events_ts: float = math.nan
    decision_ts: float = math.nan
    bans_ts: float = math.nan
    applied: dict[str, float] = field(default_factory=dict)  # host name -> report time
    f2b_ban_log: float = math.nan

    @property
    def blocked_everywhere(self) -> bool:
        return bool(self.first_fail) and all(v is not None for v in self.first_fail.values())

    @property
    def total(self) -> float:
        if not self.blocked_everywhere:
            return math.nan
        return max(v for v in self.first_fail.values() if v is not None) - self.t0


def _addresses(fleet: DevFleet, n: int) -> list[str]:
    """Free addresses of the fleet's /24 for the attackers (skipping hosts, clients, fail2ban's host)."""
    assert fleet.nsfleet is not None
    used = {h.address for h in fleet.hosts} | {c.address for c in fleet.attackers}
    if fleet.legit is not None:
        used.add(fleet.legit.address)
    net = fleet.nsfleet.subnet4
    used.add(str(net.network_address + F2B_INDEX))
    free = [str(a) for a in net.hosts() if str(a) not in used and int(a) & 0xFF >= 10]
    if len(free) < n:
        raise SystemExit(f"at most {len(free)} attacker addresses fit in {net}; ask for fewer bans")
    return free[:n]


def _probe_opts(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "interval_ms": args.interval_ms,
        "fail_after_ms": args.fail_after_ms,
        "confirm": 3,
        "max_s": args.max_wait,
    }


def _run_trial(
    trial: Trial,
    hosts: list[SimHost],
    last: SimHost,
    logs: dict[str, AmpsLog],
    probe: ProbeClient,
    args: argparse.Namespace,
    spread: bool,
) -> None:
    """maxretry-1 lines (spread over ``hosts`` or all on ``last``), the gap, then the last line on ``last``."""
    tag = f"ttb-{trial.system[:2]}{trial.index}"
    for n in range(args.maxretry - 1):
        h = hosts[n % len(hosts)] if spread else last
        logs[h.name].write(failure_line(trial.ip, f"{tag}-{n + 1}", port=40000 + n), follow=False)
    # a random part in the gap: a fixed cadence could phase-lock with components' poll loops
    time.sleep(args.gap + random.uniform(0.0, args.jitter))
    trial.probe_start = probe.start(trial.ip, [h.address for h in hosts], **_probe_opts(args))
    trial.t0 = logs[last.name].write(
        failure_line(trial.ip, f"{tag}-{args.maxretry}", port=40000 + args.maxretry), follow=False
    )
    res = probe.result()
    by_addr = {h.address: h.name for h in hosts}
    for addr, r in res["hosts"].items():
        name = by_addr[addr]
        trial.first_fail[name] = r["first_fail"]
        trial.last_ok[name] = r["last_ok"]
        trial.probes += int(r["ok"]) + int(r["fail"])


def _fill_from_topics(fleet: DevFleet, trials: list[Trial], maxretry: int) -> None:
    assert fleet.cluster is not None
    by_ip = {t.ip: t for t in trials}
    last_client = {f"ttb-{t.system[:2]}{t.index}-{maxretry}": t for t in trials}
    for rec in read_topics(fleet.cluster, ["events", "decisions", "bans", "reports"]):
        try:
            if rec.kind == "events":
                for line in decode_events(rec.value):
                    t = last_client.get(line.client)
                    if t is not None and math.isnan(t.events_ts):
                        t.events_ts = rec.ts
            elif rec.kind == "decisions":
                d = decode_decision(rec.value)
                t = by_ip.get(d.ip)
                if t is not None and d.action == "ban" and math.isnan(t.decision_ts):
                    t.decision_ts = rec.ts
            elif rec.kind == "bans" and rec.value is not None:
                b = decode_ban(rec.value)
                t = by_ip.get(b.ip)
                if t is not None and math.isnan(t.bans_ts):
                    t.bans_ts = rec.ts
            elif rec.kind == "reports":
                r = decode_report(rec.value)
                if isinstance(r, Report) and r.kind == "applied":
                    t = by_ip.get(r.ip)
                    if t is not None and r.host not in t.applied:
                        t.applied[r.host] = r.at.timestamp()
        except ContractError:
            continue


# --------------------------------------------------------------------------------------------- report


def _dist(xs: list[float]) -> dict[str, float]:
    return {
        "n": float(len(xs)),
        "p50": percentile(xs, 50),
        "p95": percentile(xs, 95),
        "p99": percentile(xs, 99),
        "max": max(xs) if xs else math.nan,
        "mean": statistics.fmean(xs) if xs else math.nan,
    }


def _stages(t: Trial) -> dict[str, float]:
    """Where one fleet2ban trial's time went; the four stages add up to the fleet-wide total."""
    if not t.blocked_everywhere or len(t.applied) < len(t.first_fail):
        return {}
    last_applied = max(t.applied.values())
    last_fail = max(v for v in t.first_fail.values() if v is not None)
    return {
        "tail+ship (line -> events record)": t.events_ts - t.t0,
        "process (-> decisions record)": t.decision_ts - t.events_ts,
        "  of which bans record after decision": t.bans_ts - t.decision_ts,
        "enforce (-> last host's applied report)": last_applied - t.decision_ts,
        "observe (-> last host refusing)": last_fail - last_applied,
        "total (fleet-wide)": last_fail - t.t0,
    }


def report(trials: list[Trial], args: argparse.Namespace, extra: dict[str, Any]) -> dict[str, Any]:
    measured = [t for t in trials if not t.warmup]
    fleet = [t for t in measured if t.system == "fleet2ban"]
    f2b = [t for t in measured if t.system == "fail2ban"]
    ft = [t.total for t in fleet if not math.isnan(t.total)]
    bt = [t.total for t in f2b if not math.isnan(t.total)]
    fd, bd = _dist(ft), _dist(bt)
    missed = {"fleet2ban": len(fleet) - len(ft), "fail2ban": len(f2b) - len(bt)}

    print()
    rows: list[list[object]] = []
    for name, d, n_trials in (
        ("fleet2ban, 3 hosts (fleet-wide)", fd, len(fleet)),
        ("fail2ban, 1 host", bd, len(f2b)),
    ):
        if n_trials:
            rows.append(
                [
                    name,
                    f"{int(d['n'])}/{n_trials}",
                    ms(d["p50"]),
                    ms(d["p95"]),
                    ms(d["p99"]),
                    ms(d["max"]),
                    ms(d["mean"]),
                ]
            )
    if ft and bt:
        rows.append(
            [
                "ratio fleet2ban / fail2ban",
                "",
                *(ratio(fd[k], bd[k]) for k in ("p50", "p95", "p99", "max", "mean")),
            ]
        )
    print(
        table(
            ["time-to-ban (ms)", "banned", "p50", "p95", "p99", "max", "mean"],
            rows,
            "Time from the 20th failure line written to a connection attempt failing",
        )
    )
    if ft:
        ok50, ok99 = fd["p50"] < TARGET_P50, fd["p99"] < TARGET_P99
        print(
            f"targets: p50 < {TARGET_P50 * 1000:.0f} ms: {'met' if ok50 else 'MISSED'} ({ms(fd['p50'])}); "
            f"p99 < {TARGET_P99 * 1000:.0f} ms: {'met' if ok99 else 'MISSED'} ({ms(fd['p99'])})"
        )

    stage_rows: list[list[object]] = []
    stages: dict[str, list[float]] = defaultdict(list)
    for t in fleet:
        for k, v in _stages(t).items():
            if not math.isnan(v):
                stages[k].append(v)
    total_p50 = percentile(stages.get("total (fleet-wide)", []), 50)
    for k, xs in stages.items():
        share = ratio(percentile(xs, 50), total_p50) if not k.startswith("total") else ""
        stage_rows.append(
            [
                k,
                len(xs),
                ms(percentile(xs, 50)),
                ms(percentile(xs, 95)),
                ms(max(xs)),
                ms(statistics.fmean(xs)),
                share,
            ]
        )
    if stage_rows:
        print()
        print(
            table(
                ["fleet2ban: where the time goes (ms)", "n", "p50", "p95", "max", "mean", "p50 share"],
                stage_rows,
                "Record timestamps have 1 ms resolution; probe resolution is about --interval-ms",
            )
        )

    host_rows: list[list[object]] = []
    names = sorted({h for t in fleet for h in t.first_fail})
    for h in names:
        tot = [ff - t.t0 for t in fleet if (ff := t.first_fail.get(h)) is not None]
        enf = [
            t.applied[h] - t.decision_ts for t in fleet if h in t.applied and not math.isnan(t.decision_ts)
        ]
        obs = [ff - t.applied[h] for t in fleet if (ff := t.first_fail.get(h)) is not None and h in t.applied]
        host_rows.append(
            [
                h,
                ms(percentile(tot, 50)),
                ms(percentile(tot, 99)),
                ms(percentile(enf, 50)),
                ms(percentile(enf, 99)),
                ms(percentile(obs, 50)),
                ms(percentile(obs, 99)),
            ]
        )
    if host_rows:
        print()
        print(
            table(
                [
                    "per host (ms)",
                    "ban p50",
                    "ban p99",
                    "enforce p50",
                    "enforce p99",
                    "observe p50",
                    "observe p99",
                ],
                host_rows,
            )
        )

    if f2b:
        det = [t.f2b_ban_log - t.t0 for t in f2b if not math.isnan(t.f2b_ban_log)]
        act = [
            t.total - (t.f2b_ban_log - t.t0)
            for t in f2b
            if not math.isnan(t.f2b_ban_log) and not math.isnan(t.total)
        ]
        print()
        print(
            table(
                ["fail2ban: where the time goes (ms)", "n", "p50", "p95", "max"],
                [
                    [
                        "detect (line -> 'Ban' in its log)",
                        len(det),
                        ms(percentile(det, 50)),
                        ms(percentile(det, 95)),
                        ms(max(det, default=math.nan)),
                    ],
                    [
                        "action + observe (-> refusing)",
                        len(act),
                        ms(percentile(act, 50)),
                        ms(percentile(act, 95)),
                        ms(max(act, default=math.nan)),
                    ],
                ],
            )
        )
    probes = [t.probes for t in measured]
    print()
    print(
        f"trials: {len(fleet)} fleet2ban + {len(f2b)} fail2ban measured ({sum(t.warmup for t in trials)} warm-up);"
        f" not banned within {args.max_wait:.0f}s: {missed}; probe attempts per trial: median "
        f"{statistics.median(probes) if probes else 0:.0f}; probe interval {args.interval_ms} ms,"
        f" failure after {args.fail_after_ms} ms; gap before the 20th line {args.gap}s + U(0, {args.jitter})s"
    )
    return {
        "fleet2ban": fd,
        "fail2ban": bd,
        "missed": missed,
        "stages": {k: _dist(v) for k, v in stages.items()},
        "trials": [asdict(t) | {"total": t.total} for t in trials],
        **extra,
    }


# ----------------------------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    reason = netns.unavailable_reason()
    if reason:
        raise SystemExit(f"time_to_ban needs network namespaces: {reason}")
    use_f2b = not args.no_fail2ban
    if use_f2b and (why := fail2ban_unavailable_reason()):
        raise SystemExit(f"{why}; or pass --no-fail2ban")
    total = args.warmup + args.bans
    opts = DevOptions(
        hosts=3, attackers=1, bantime=float(args.bantime), maxretry=args.maxretry, kafka_nodes=3
    )
    trials: list[Trial] = []
    started = time.monotonic()
    with DevFleet(opts) as fleet:
        for line in fleet.describe():
            print(line)
        att = fleet.attackers[0]
        addrs = _addresses(fleet, total * (2 if use_f2b else 1))
        fleet.add_client_addresses(att, addrs)
        f2b: Fail2ban | None = None
        probe: ProbeClient | None = None
        logs: dict[str, AmpsLog] = {}
        try:
            if use_f2b:
                f2b_host = fleet.add_sim_host("f2b", F2B_INDEX)
                f2b = Fail2ban(
                    f2b_host,
                    fleet.workdir / "f2b",
                    backend=args.f2b_backend,
                    bantime=args.bantime,
                    maxretry=args.maxretry,
                )
                f2b.start(fleet)
                logs["f2b"] = AmpsLog(f2b_host.log_path)
                print(f"fail2ban    {f2b_host.address} (netns {f2b_host.netns}), backend {args.f2b_backend}")
            wait_fleet_ready(fleet)
            for h in fleet.hosts:
                logs[h.name] = AmpsLog(h.log_path)
            probe = ProbeClient(att.netns)
            print(
                f"setup {time.monotonic() - started:.1f}s; {args.bans} bans each (+{args.warmup} warm-up)",
                flush=True,
            )
            for i in range(total):
                warm = i < args.warmup
                t = Trial("fleet2ban", i, addrs[i], warm)
                _run_trial(t, fleet.hosts, fleet.hosts[i % len(fleet.hosts)], logs, probe, args, spread=True)
                trials.append(t)
                if f2b is not None:
                    b = Trial("fail2ban", i, addrs[total + i], warm)
                    _run_trial(b, [f2b.host], f2b.host, logs, probe, args, spread=False)
                    trials.append(b)
                if args.verbose:
                    print(
                        f"  {i:3d} " + "  ".join(f"{x.system} {ms(x.total)} ms" for x in trials[-2:]),
                        flush=True,
                    )
            _fill_from_topics(fleet, [t for t in trials if t.system == "fleet2ban"], args.maxretry)
            if f2b is not None:
                print(f"fail2ban's file backend: {f2b.backend_used()} (configured: {args.f2b_backend})")
                times = f2b.ban_times()
                for t in trials:
                    if t.system == "fail2ban" and t.ip in times:
                        t.f2b_ban_log = times[t.ip]
        finally:
            if probe is not None:
                probe.close()
            if f2b is not None:
                f2b.stop()
            for lg in logs.values():
                lg.close()
    return report(trials, args, {"machine": describe_machine(), "seconds": time.monotonic() - started})


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m bench time_to_ban",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--bans", type=int, default=60, help="measured bans per system (default 60)")
    ap.add_argument("--warmup", type=int, default=2, help="unmeasured bans first (default 2)")
    ap.add_argument("--gap", type=float, default=0.3, help="seconds between the 19th and the 20th line")
    ap.add_argument("--jitter", type=float, default=0.25, help="plus a uniform random 0..N s (default 0.25)")
    ap.add_argument("--interval-ms", type=float, default=3.0, help="probe attempts per host every N ms")
    ap.add_argument(
        "--fail-after-ms", type=float, default=25.0, help="an attempt unanswered this long failed"
    )
    ap.add_argument("--max-wait", type=float, default=15.0, help="give up on one ban after N seconds")
    ap.add_argument("--maxretry", type=int, default=20)
    ap.add_argument("--bantime", type=int, default=120)
    ap.add_argument("--no-fail2ban", action="store_true", help="skip the reference")
    ap.add_argument("--f2b-backend", default="auto", help="fail2ban's backend (the seed: default = auto)")
    ap.add_argument("--json", type=Path, help="also write the figures and every trial to this file")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each trial")
    return ap.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    out = run(args)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    return 0 if out["missed"]["fleet2ban"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
