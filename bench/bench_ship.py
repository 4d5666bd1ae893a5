"""Ship rate: lines/s from the log file to acknowledged by a local 3-node Kafka (acks=all), on one core.

Each case runs in a child process pinned to one CPU (the broker is pinned to the other): the shipper
reads a generated log from its start, parses, batches per IP and ships; the clock stops when the broker
has acknowledged every event. Cases: a flood from a few IPs, and lines from 10,000 distinct IPs, each at
N and 10N lines (peak RSS should stay flat as the file grows 10x). The reference, measured in the same
run, is a raw confluent-kafka loop producing one pre-encoded record per line (no reading, no parsing).
Target: at least 100,000 lines/s.

    python -m bench ship [--lines N] [--no-10x]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from bench._amps_log import generate

CHILD = "--child"


def _expected_events(lines: int) -> int:
    return lines - (lines + 49) // 50


def _pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(0, {cpu})


def _kafka(bootstrap: str, prefix: str) -> Any:
    from fleet2ban.kafka import resolve
    from fleet2ban.settings import KafkaSettings

    return resolve(
        KafkaSettings(
            bootstrap_servers=bootstrap,
            topic_prefix=prefix,
            partitions=6,
            replication_factor=min(3, len(bootstrap.split(","))),
        )
    )


def child_ship(log: Path, bootstrap: str, prefix: str, lines: int) -> dict[str, Any]:
    from fleet2ban.settings import Settings, ShipperSettings
    from shipper.ship import Pending, Shipper

    cluster = _kafka(bootstrap, prefix)
    tmp = Path(tempfile.mkdtemp(prefix="f2b-bench-ship-"))
    settings = Settings(
        kafka=cluster.settings,
        shipper=ShipperSettings(log_path=log, host="bench", from_start=True, checkpoint_path=tmp / "cp"),
        state_dir=tmp,
    )
    want = _expected_events(lines)
    acked = [0]
    done = threading.Event()

    def on_ack(b: Pending) -> None:
        acked[0] += len(b.lines)
        if acked[0] >= want:
            done.set()

    ship = Shipper(settings, cluster, on_ack=on_ack)
    stop = threading.Event()
    t0 = time.perf_counter()
    c0 = time.process_time()
    th = threading.Thread(target=ship.run, args=(stop,), daemon=True)
    th.start()
    done.wait(600)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    stop.set()
    th.join(30)
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "lines": lines,
        "events": acked[0],
        "records": ship.stats.records_shipped,
        "wall": wall,
        "cpu": cpu,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child_raw(bootstrap: str, prefix: str, lines: int, n_ips: int) -> dict[str, Any]:
    """The reference: one pre-encoded record per line straight into confluent-kafka."""
    from confluent_kafka import Producer

    from bench._amps_log import T0, ip_of
    from fleet2ban.contract import EventBatch, Line, encode, normalize_ip
    from fleet2ban.kafka import producer_config

    cluster = _kafka(bootstrap, prefix)
    n = _expected_events(lines)
    ips = [normalize_ip(ip_of(i)) for i in range(n_ips)]
    recs = [
        (
            ips[i % n_ips].encode(),
            encode(
                EventBatch(
                    host="bench",
                    ip=ips[i % n_ips],
                    lines=[
                        Line(
                            id=f"bench:1-2-3:{i * 110}",
                            ts=T0,
                            port=1024,
                            client="loader",
                            reason="auth",
                            raw="x" * 100,
                        )
                    ],
                )
            ),
        )
        for i in range(n)
    ]
    acked = [0]

    def cb(err: Any, msg: Any) -> None:
        if err is None:
            acked[0] += 1

    p = Producer({**producer_config(cluster), "queue.buffering.max.messages": 2_000_000})
    topic = cluster.topics.events
    t0 = time.perf_counter()
    c0 = time.process_time()
    for key, value in recs:
        while True:
            try:
                p.produce(topic, value, key, on_delivery=cb)
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
    p.flush(600)
    return {
        "lines": lines,
        "events": acked[0],
        "records": acked[0],
        "wall": time.perf_counter() - t0,
        "cpu": time.process_time() - c0,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _run_child(args: list[str]) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench", "ship", CHILD, *args], capture_output=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"child failed: {out.stderr.decode(errors='replace')[-3000:]}")
    res: dict[str, Any] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return res


def main(argv: list[str]) -> int:
    if argv and argv[0] == CHILD:
        logging.basicConfig(level=logging.WARNING)
        kind, a, bootstrap, prefix, lines = argv[1], argv[2], argv[3], argv[4], int(argv[5])
        _pin(1)
        res = (
            child_ship(Path(a), bootstrap, prefix, lines)
            if kind == "ship"
            else child_raw(bootstrap, prefix, lines, int(a))
        )
        print(json.dumps(res))
        return 0
    ap = argparse.ArgumentParser(prog="python -m bench ship")
    ap.add_argument("--lines", type=int, default=100_000)
    ap.add_argument("--no-10x", action="store_true", help="skip the 10x files (RSS flatness)")
    args = ap.parse_args(argv)

    from bench._kafka import bench_cluster
    from fleet2ban.kafka import ensure_topics

    work = Path(tempfile.mkdtemp(prefix="f2b-bench-ship-"))
    rows: list[tuple[str, dict[str, Any]]] = []
    try:
        with bench_cluster() as broker:
            if broker.pids and len(os.sched_getaffinity(0)) > 1:
                for pid in broker.pids:
                    os.sched_setaffinity(pid, {0})
            sizes = [args.lines] if args.no_10x else [args.lines, args.lines * 10]
            cases = [("flood, 5 IPs", 5), ("10,000 distinct IPs", 10_000)]
            for label, n_ips in cases:
                prefix = f"b{uuid.uuid4().hex[:8]}."
                ensure_topics(_kafka(broker.bootstrap, prefix))
                rows.append(
                    (
                        f"raw producer, 1 record/line, {label}",
                        _run_child(["raw", str(n_ips), broker.bootstrap, prefix, str(args.lines)]),
                    )
                )
                for n in sizes:
                    log = generate(work / f"{n_ips}-{n}.log", n, n_ips=n_ips, flood=n_ips <= 16)
                    prefix = f"b{uuid.uuid4().hex[:8]}."
                    ensure_topics(_kafka(broker.bootstrap, prefix))
                    rows.append(
                        (
                            f"shipper, {label}, {n:,} lines",
                            _run_child(["ship", str(log), broker.bootstrap, prefix, str(n)]),
                        )
                    )
                    log.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\n{'case':<48} {'lines/s':>9} {'records/s':>9} {'lines/rec':>9} {'CPU s':>6} {'lines/CPU-s':>11}"
        f" {'RSS MB':>6} {'vs raw (wall, CPU)':>18}"
    )
    ref: dict[str, Any] = {}
    for name, r in rows:
        lps, lpc = r["events"] / r["wall"], r["events"] / r["cpu"]
        if name.startswith("raw"):
            ref = r
        rw = lps / (ref["events"] / ref["wall"]) if ref else 1.0
        rc = lpc / (ref["events"] / ref["cpu"]) if ref else 1.0
        print(
            f"{name:<48} {lps:9,.0f} {r['records'] / r['wall']:9,.0f} {r['events'] / max(1, r['records']):9.1f}"
            f" {r['cpu']:6.2f} {lpc:11,.0f} {r['rss_mb']:6.0f} {rw:8.1f}x {rc:8.1f}x"
        )
    print(
        "\nlines/s: events acknowledged / wall time from start to the last acknowledgement, the shipper pinned"
        " to one CPU\n(the broker to the other). lines/CPU-s: the same over the process's CPU time (all its"
        " threads), the\nfigure that does not depend on what else runs on the machine. Target: 100,000 lines/s."
    )
    return 0
