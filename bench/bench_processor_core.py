"""Processor core: events/s through the jail core over a generated fleet log (attack + background).

Rows (same events, same run):
- reference: a naive per-IP sliding window (deque of times, ban at maxretry, clear, skip while banned)
  in a dict: the minimum any exact-window processor must do, without lateness, duplicates, evidence,
  expiry, forgetting or decisions (the ban counts must agree: the log is in order);
- core, one event per call (``Engine.feed``): what ``fleet2ban replay`` does;
- core, one call per events record (``Engine.feed_batch`` on runs of one IP from one host, as the
  shippers batch them): what the Faust agent does per record;
- with ``--parse``: the AMPS log written to a file, then parse + core (``fleet2ban replay``'s path).
Rates use this process's CPU time (the machine is shared). Figures are ratios to the reference. Target: >= 300,000 events/s for the core on one core.

Usage: python -m bench processor_core [--events N] [--attackers N] [--background N] [--parse]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from fleet2ban.contract import Event, from_epoch
from fleet2ban.settings import JailSettings
from processor.engine import Engine
from processor.policy import Output, Policy

BASE = 1_764_000_000.0
HOSTS = ("amps-1", "amps-2", "amps-3")


def generate(n: int, attackers: int, background: int, rate: float, seed: int = 7) -> list[Event]:
    """``n`` events at ``rate``/s of event time: 20% from attackers (bursts of 5-40 lines on one host),
    80% from background clients (one failure now and then), interleaved across three hosts."""
    rng = random.Random(seed)
    att = [f"203.0.{i // 250}.{i % 250 + 1}" for i in range(attackers)]
    bg = [f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}" for i in range(background)]
    out: list[Event] = []
    t = BASE
    i = 0
    while i < n:
        if rng.random() < 0.011:  # bursts average 22.5 lines: 1.1% of draws give ~20% of the lines
            ip, host = rng.choice(att), rng.choice(HOSTS)
            burst = min(rng.randint(5, 40), n - i)
        else:
            ip, host, burst = rng.choice(bg), rng.choice(HOSTS), 1
        for _ in range(burst):
            t += 1.0 / rate
            out.append(
                Event(
                    host=host,
                    ip=ip,
                    id=f"{host}:f:{i}",
                    ts=from_epoch(t),
                    port=40000,
                    client="app",
                    reason="auth",
                    raw="",
                )
            )
            i += 1
    return out


def naive(events: list[Event], maxretry: int, findtime: float, bantime: float) -> int:
    windows: dict[str, deque[float]] = {}
    banned_until: dict[str, float] = {}
    bans = 0
    for ev in events:
        t = ev.ts.timestamp()
        if banned_until.get(ev.ip, 0.0) > t:
            continue
        w = windows.get(ev.ip)
        if w is None:
            w = windows[ev.ip] = deque()
        w.append(t)
        while w[0] <= t - findtime:
            w.popleft()
        if len(w) >= maxretry:
            bans += 1
            w.clear()
            banned_until[ev.ip] = t + bantime
    return bans


def core_per_event(events: list[Event], jail: JailSettings) -> int:
    engine = Engine(Policy.from_settings([jail], 5.0))
    out: list[Output] = []
    engine.feed(events, out)
    return sum(1 for o in out if o.decision.action == "ban")


def runs(events: list[Event]) -> list[list[Event]]:
    batches: list[list[Event]] = []
    cur: list[Event] = []
    for ev in events:
        if cur and (ev.ip != cur[0].ip or ev.host != cur[0].host or len(cur) >= 500):
            batches.append(cur)
            cur = []
        cur.append(ev)
    if cur:
        batches.append(cur)
    return batches


def core_per_record(batches: list[list[Event]], jail: JailSettings) -> int:
    engine = Engine(Policy.from_settings([jail], 5.0))
    out: list[Output] = []
    for b in batches:
        engine.advance(b[0].ts.timestamp(), out)
        engine.feed_batch(b[0].ip, b, out)
    return sum(1 for o in out if o.decision.action == "ban")


def write_log(events: list[Event], path: Path) -> None:
    pst = timezone(timedelta(hours=-8))
    with path.open("w") as f:
        for ev in events:
            local = ev.ts.astimezone(pst)
            f.write(
                f"{local.strftime('%Y-%m-%dT%H:%M:%S.%f')}0-08:00 [26] info: 07-0013 "
                f"client[app]({ev.ip}:{ev.port}) disconnected: {ev.reason}.\n"
            )


def parse_and_core(path: Path, jail: JailSettings) -> int:
    from shipper.parse import iter_file_events  # bench composes like the CLI does

    engine = Engine(Policy.from_settings([jail], 5.0))
    out: list[Output] = []
    engine.feed(iter_file_events(path, "amps-1"), out)
    return sum(1 for o in out if o.decision.action == "ban")


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    """CPU seconds of this process (the machine is shared: wall time would count other work)."""
    t0 = time.process_time()
    bans = fn()
    return time.process_time() - t0, bans


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench processor_core")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--attackers", type=int, default=100)
    ap.add_argument("--background", type=int, default=10_000)
    ap.add_argument("--rate", type=float, default=2000.0, help="events/s of event time in the log")
    ap.add_argument("--parse", action="store_true", help="also time parse + core from a log file")
    args = ap.parse_args(argv)
    jail = JailSettings()
    t0 = time.perf_counter()
    events = generate(args.events, args.attackers, args.background, args.rate)
    batches = runs(events)
    print(
        f"generated {len(events):,} events ({len(batches):,} records) in {time.perf_counter() - t0:.1f}s; "
        f"jail maxretry={jail.maxretry} findtime={jail.findtime}s; started {datetime.now(UTC):%H:%M:%S}Z"
    )
    rows: list[tuple[str, float, int, str]] = []
    ref_s, ref_bans = timed(lambda: naive(events, jail.maxretry, jail.findtime, jail.bantime))
    rows.append(("reference: naive deque window", ref_s, ref_bans, ""))
    s, bans = timed(lambda: core_per_event(events, jail))
    rows.append(("core, per event (replay)", s, bans, ""))
    s, bans = timed(lambda: core_per_record(batches, jail))
    rows.append(("core, per record (worker)", s, bans, f"{len(batches) / s:,.0f} records/s"))
    if args.parse:
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "fleet.log"
            write_log(events, path)
            s, bans = timed(lambda: parse_and_core(path, jail))
            rows.append(("parse + core from a log file", s, bans, ""))
    print(f"\n{'variant':<34} {'events/s':>12} {'x reference':>12} {'bans':>7}  note")
    for name, secs, bans, note in rows:
        rate = len(events) / secs
        print(f"{name:<34} {rate:>12,.0f} {ref_s / secs:>12.2f} {bans:>7}  {note}")
    return 0
