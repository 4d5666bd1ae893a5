"""Processor worker: one/two Faust workers on a local 3-node Kafka, lines/s and records/s, decision delay.

Scenarios (a fresh set of topics each, 6 partitions, the backlog produced before the workers start):
- flood: 100 attacker IPs over 3 hosts, records of ``--lines-per-record`` lines (a shipper batches a
  flooding client's lines per 10 ms flush): failure lines/s and records/s through one worker;
- distinct: ``--ips`` background IPs, one line per record: records/s for one worker, then two;
- delay: at low load, the 20th failure of a fresh IP produced -> its decision read back (p50/p99), over
  ``--trials`` trials.
References measured in the same run: the same logic (decode + jail core + produce decisions) in a plain
confluent-kafka loop over the same backlog, and a bare produce -> consume round trip for the delay.

Usage: python -m bench processor_worker [--flood-lines N] [--ips N] [--trials N] [--quick]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import yaml
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from bench._kafka import bench_cluster
from bench.pyspy import Recording, components, top_self
from fleet2ban.contract import EventBatch, Line, decode_batch, encode, utcnow
from fleet2ban.kafka import Cluster, consumer_config, ensure_topics, producer_config, resolve
from fleet2ban.kafka.local import free_port
from fleet2ban.settings import JailSettings, KafkaSettings
from processor.app import outputs_to_records
from processor.engine import Engine
from processor.policy import Output, Policy

PARTITIONS = 6


def fresh(bootstrap: str) -> Cluster:
    ks = KafkaSettings(
        bootstrap_servers=bootstrap,
        topic_prefix=f"b{uuid.uuid4().hex[:6]}.",
        partitions=PARTITIONS,
        replication_factor=min(3, len(bootstrap.split(","))),
    )
    c = resolve(ks)
    ensure_topics(c)
    return c


def fill(cluster: Cluster, records: list[tuple[bytes, bytes]]) -> None:
    p = Producer(producer_config(cluster, linger_ms=20, **{"batch.num.messages": 2000}))
    for key, value in records:
        while True:
            try:
                p.produce(cluster.topics.events, key=key, value=value)
                break
            except BufferError:
                p.poll(0.05)
    p.flush(60)


def flood_records(lines: int, per_record: int) -> list[tuple[bytes, bytes]]:
    out = []
    n = 0
    hosts = ("amps-1", "amps-2", "amps-3")
    while n < lines:
        for a in range(100):
            ip = f"203.0.113.{a + 1}"
            host = hosts[(n // per_record) % 3]
            ts = utcnow()
            batch = EventBatch(
                host=host,
                ip=ip,
                lines=[
                    Line(id=f"{host}:f:{n + i}", ts=ts, port=40000, client="x", reason="auth")
                    for i in range(per_record)
                ],
            )
            out.append((ip.encode(), encode(batch)))
            n += per_record
            if n >= lines:
                break
    return out


def distinct_records(ips: int) -> list[tuple[bytes, bytes]]:
    ts = utcnow()
    out = []
    for i in range(ips):
        ip = f"10.{i // 62500}.{i // 250 % 250}.{i % 250 + 1}"
        b = EventBatch(
            host="amps-1", ip=ip, lines=[Line(id=f"amps-1:d:{i}", ts=ts, port=1, client="c", reason="auth")]
        )
        out.append((ip.encode(), encode(b)))
    return out


def plain_loop(cluster: Cluster, n_records: int) -> tuple[float, int]:
    """The reference: confluent consumer (assign, from the beginning), decode, core, produce decisions."""
    from confluent_kafka import OFFSET_BEGINNING

    c = Consumer(consumer_config(cluster, **{"enable.partition.eof": False}))
    c.assign([TopicPartition(cluster.topics.events, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    prod = Producer(producer_config(cluster, linger_ms=5))
    engine = Engine(Policy.from_settings([JailSettings()], 5.0))
    out: list[Output] = []
    seen = lines = 0
    t0 = None
    while seen < n_records:
        for msg in c.consume(1000, 0.5):
            if msg.error():
                continue
            if t0 is None:
                t0 = time.perf_counter()
            seen += 1
            b = decode_batch(msg.value())
            evs = b.events()
            lines += len(evs)
            engine.feed_batch(b.ip, evs, out)
            if out:
                for kind, key, value in outputs_to_records(out):
                    prod.produce(getattr(cluster.topics, kind), key=key, value=value)
                out.clear()
            prod.poll(0)
    prod.flush(10)
    c.close()
    assert t0 is not None
    return time.perf_counter() - t0, lines


class Workers:
    def __init__(self, cluster: Cluster, tmp: Path, n: int) -> None:
        self.ports = [free_port() for _ in range(n)]
        self.procs = []
        for i, port in enumerate(self.ports):
            cfg = tmp / f"w{i}.yaml"
            cfg.write_text(
                yaml.safe_dump(
                    {
                        "kafka": {"partitions": PARTITIONS},
                        "state_dir": str(tmp / "state"),
                        "metrics": {"port": port, "bind": "127.0.0.1"},
                        "log": {"level": "WARNING"},
                    }
                )
            )
            args = [sys.executable, "-m", "fleet2ban.cli.main", "-c", str(cfg), "-b", cluster.bootstrap]
            args += ["--topic-prefix", cluster.settings.topic_prefix, "processor"]
            log = open(tmp / f"w{i}.log", "ab")  # noqa: SIM115
            self.procs.append(
                subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
            )

    def counters(self) -> tuple[float, float]:
        recs = lines = 0.0
        for port in self.ports:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    text = r.read().decode()
            except OSError:
                continue
            recs += sum(float(x) for x in re.findall(r"^fleet2ban_processor_records_total (\S+)", text, re.M))
            lines += sum(float(x) for x in re.findall(r"^fleet2ban_processor_lines_total (\S+)", text, re.M))
        return recs, lines

    def ready(self, cluster: Cluster, timeout: float = 90.0) -> float:
        """Probe every partition until every worker has consumed something; return the records so far."""
        from processor.app import murmur2_partition

        keys: dict[int, bytes] = {}
        i = 0
        while len(keys) < PARTITIONS:
            ip = f"192.0.2.{i + 1}"
            keys.setdefault(murmur2_partition(ip.encode(), PARTITIONS), ip.encode())
            i += 1
        prod = Producer(producer_config(cluster, linger_ms=0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for key in keys.values():
                line = Line(id=f"probe:{uuid.uuid4().hex}", ts=utcnow(), port=1, client="c", reason="probe")
                batch = EventBatch(host="p", ip=key.decode(), lines=[line])
                prod.produce(cluster.topics.events, key=key, value=encode(batch))
            prod.flush(5)
            time.sleep(0.5)
            if all(self._records(port) > 0 for port in self.ports):
                time.sleep(1.0)
                return self.counters()[0]
        raise TimeoutError("the workers did not all start consuming")

    def _records(self, port: int) -> float:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
        except OSError:
            return 0.0
        return sum(float(x) for x in re.findall(r"^fleet2ban_processor_records_total (\S+)", text, re.M))

    def run_until(
        self, n_records: float, base: float = 0.0, timeout: float = 600.0
    ) -> tuple[float, float, float]:
        """(seconds from the first record past ``base`` to the last, records, lines)."""
        t_first = None
        r0 = l0 = 0.0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recs, lines = self.counters()
            now = time.perf_counter()
            if t_first is None and recs > base:
                t_first, r0, l0 = now, recs, lines
            if t_first is not None and recs >= base + n_records:
                return now - t_first, recs - r0, lines - l0
            time.sleep(0.05)
        raise TimeoutError(f"workers processed {self.counters()} of {n_records} records")

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()


def delay_trials(cluster: Cluster, trials: int, workers: Workers) -> list[float]:
    """ms from producing the 20th failure of a fresh IP to reading its decision."""
    prod = Producer(producer_config(cluster, linger_ms=0))
    cons = Consumer(consumer_config(cluster, **{"enable.partition.eof": False, "fetch.wait.max.ms": 10}))
    cons.assign([TopicPartition(cluster.topics.decisions, p, OFFSET_END) for p in range(PARTITIONS)])
    cons.consume(10, 0.5)
    out = []
    for i in range(trials):
        ip = f"198.18.{i // 250}.{i % 250 + 1}"
        lines = [Line(id=f"d:{i}:{k}", ts=utcnow(), port=1, client="c", reason="auth") for k in range(19)]
        prod.produce(
            cluster.topics.events, key=ip.encode(), value=encode(EventBatch(host="h", ip=ip, lines=lines))
        )
        prod.flush(5)
        time.sleep(0.3)
        last = Line(id=f"d:{i}:19", ts=utcnow(), port=1, client="c", reason="auth")
        t0 = time.perf_counter()
        prod.produce(
            cluster.topics.events, key=ip.encode(), value=encode(EventBatch(host="h", ip=ip, lines=[last]))
        )
        prod.flush(5)
        found = False
        deadline = time.monotonic() + 10
        while not found and time.monotonic() < deadline:
            msg = cons.poll(0.05)
            if msg is not None and not msg.error() and msg.key() == ip.encode():
                found = True
        if found:
            out.append((time.perf_counter() - t0) * 1000)
    cons.close()
    return out


def roundtrip_trials(cluster: Cluster, trials: int) -> list[float]:
    """The reference delay: produce one record, read it back (no processor)."""
    prod = Producer(producer_config(cluster, linger_ms=0))
    cons = Consumer(consumer_config(cluster, **{"enable.partition.eof": False, "fetch.wait.max.ms": 10}))
    topic = cluster.topics.reports
    cons.assign([TopicPartition(topic, p, OFFSET_END) for p in range(PARTITIONS)])
    cons.consume(10, 0.5)
    out = []
    for i in range(trials):
        time.sleep(0.05)
        key = f"rt{i}".encode()
        t0 = time.perf_counter()
        prod.produce(topic, key=key, value=b"{}")
        prod.flush(5)
        found = False
        while not found:
            msg = cons.poll(0.05)
            if msg is not None and not msg.error() and msg.key() == key:
                found = True
        out.append((time.perf_counter() - t0) * 1000)
    cons.close()
    return out


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench processor_worker")
    ap.add_argument("--flood-lines", type=int, default=300_000)
    ap.add_argument("--lines-per-record", type=int, default=50)
    ap.add_argument("--ips", type=int, default=10_000)
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument(
        "--profile", action="store_true", help="py-spy the 1-worker distinct-IPs run: where the time goes"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.flood_lines, args.ips, args.trials = 5_000, 500, 3
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory() as d, bench_cluster() as broker:
        tmp = Path(d)
        profile = tmp / "worker.pyspy" if args.profile else None

        def through_workers(
            n_workers: int, recs: list[tuple[bytes, bytes]], profile: Path | None = None
        ) -> tuple[float, float, float]:
            """Start workers on fresh topics, wait until each consumes, then produce and time the backlog."""
            c = fresh(broker.bootstrap)
            w = Workers(c, tmp, n_workers)
            rec = None
            try:
                base = w.ready(c)
                if profile is not None:
                    rec = Recording(w.procs[0].pid, profile).start()
                fill(c, recs)
                return w.run_until(len(recs), base)
            finally:
                if rec is not None:
                    rec.stop()
                w.stop()

        def reference(recs: list[tuple[bytes, bytes]]) -> tuple[float, int]:
            c = fresh(broker.bootstrap)
            fill(c, recs)
            return plain_loop(c, len(recs))

        # --- flood
        recs = flood_records(args.flood_lines, args.lines_per_record)
        ref_s, ref_lines = reference(recs)
        secs, n_rec, n_lines = through_workers(1, recs)
        ref_rate = ref_lines / ref_s
        rows.append(
            (
                "flood, plain loop (reference)",
                f"{ref_rate:,.0f} lines/s",
                f"{len(recs) / ref_s:,.0f} rec/s",
                "1.00",
            )
        )
        rows.append(
            (
                "flood, 1 Faust worker",
                f"{n_lines / secs:,.0f} lines/s",
                f"{n_rec / secs:,.0f} rec/s",
                f"{n_lines / secs / ref_rate:.3f}",
            )
        )
        # --- distinct IPs, 1 then 2 workers
        recs = distinct_records(args.ips)
        ref_s, _ = reference(recs)
        ref_rec_rate = len(recs) / ref_s
        rows.append(("distinct IPs, plain loop (reference)", "", f"{ref_rec_rate:,.0f} rec/s", "1.00"))
        results: dict[int, float] = {}
        for n_workers in (1, 2):
            secs, n_rec, _ = through_workers(n_workers, recs, profile if n_workers == 1 else None)
            results[n_workers] = n_rec / secs
            rows.append(
                (
                    f"distinct IPs, {n_workers} Faust worker(s)",
                    "",
                    f"{results[n_workers]:,.0f} rec/s",
                    f"{results[n_workers] / ref_rec_rate:.3f}",
                )
            )
        rows.append(("scaling: 2 workers / 1 worker", "", "", f"{results[2] / results[1]:.2f}"))
        # --- decision delay at low load
        c = fresh(broker.bootstrap)
        rt = roundtrip_trials(c, args.trials)
        w = Workers(c, tmp, 1)
        try:
            w.ready(c)
            delays = delay_trials(c, args.trials, w)
        finally:
            w.stop()
        rows.append(
            (
                "round trip, no processor (reference)",
                f"p50 {pct(rt, 0.5):.1f} ms",
                f"p99 {pct(rt, 0.99):.1f} ms",
                "1.00",
            )
        )
        if delays:
            rows.append(
                (
                    f"decision delay, 1 worker ({len(delays)}/{args.trials})",
                    f"p50 {pct(delays, 0.5):.1f} ms",
                    f"p99 {pct(delays, 0.99):.1f} ms",
                    f"{statistics.median(delays) / statistics.median(rt):.2f}",
                )
            )
        profile_rows = profile_table(profile) if profile is not None and profile.exists() else []
    print(f"\n{'scenario':<40} {'lines':>18} {'records / delay':>18} {'x reference':>12}")
    for r in rows:
        print(f"{r[0]:<40} {r[1]:>18} {r[2]:>18} {r[3]:>12}")
    for line in profile_rows:
        print(line)
    return 0


def profile_table(path: Path) -> list[str]:
    """py-spy's view of the 1-worker distinct-IPs run (CPU samples holding the GIL)."""
    title = "where the worker's CPU goes (py-spy --gil, distinct IPs)"
    lines = ["", f"{title:<64} {'share':>8}"]
    lines += [f"{name:<64} {share:>8.1%}" for name, share in components(path)]
    lines += ["", f"{'hottest functions (self)':<64} {'share':>8}"]
    lines += [f"{name[:64]:<64} {share:>8.1%}" for name, share in top_self(path)]
    return lines
