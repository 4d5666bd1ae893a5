"""Allow-list: entry written -> the bans it covers lifted on every enforcer (p50/p99), vs a bare round trip.

On a local 3-node Kafka (acks=all): a processor (a subprocess, as deployed) and ``--enforcers`` dry-run
enforcer agents (threads of this process, each following ``bans`` and ``allow`` like a host's). Each
trial bans ``--bans`` addresses of a fresh /24 by hand, waits until every enforcer applied them, then
writes an allow-list entry for the /24 (``fleet2ban allow add``'s writer: the entry on ``allow`` and its
audit record on ``decisions``, with a producer already connected) and measures from the produce call
to the moment the last enforcer has removed the last of them (its kernel view, polled every millisecond),
and to the last of the processor's tombstones on ``bans`` (its unban decisions). The reference, measured
in the same run: a record produced and read back by a plain confluent-kafka consumer (what any
Kafka-based path pays, acks=all included).

Usage: python -m bench allow [--trials N] [--bans N] [--enforcers N]
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Producer

from bench._kafka import bench_cluster
from enforcer.agent import Agent
from enforcer.backends.dryrun import DryRunBackend
from enforcer.plan import JailSpec
from fleet2ban.allowlist import new_entry
from fleet2ban.audit.manual import manual_ban_decision, manual_decision_id
from fleet2ban.audit.writer import publish_decisions
from fleet2ban.contract import allow_decision, ban_key, encode, utcnow
from fleet2ban.kafka import Source, TopicReader, producer_config
from fleet2ban.settings import load_settings
from fleet2ban.waiting import wait_for


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def main(argv: list[str]) -> int:  # noqa: C901  # a bench script: its options and report in one place (allow-list engineer's)
    ap = argparse.ArgumentParser(prog="python -m bench allow", description=__doc__)
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--bans", type=int, default=5, help="bans in force that each entry covers")
    ap.add_argument("--enforcers", type=int, default=3)
    args = ap.parse_args(argv)
    logging.getLogger("enforcer.core").setLevel(logging.ERROR)  # one "refusing" line per ban and host
    with bench_cluster() as broker, tempfile.TemporaryDirectory(prefix="f2b-bench-allow-") as tmp:
        cluster = broker.fresh_topics("a")
        kafka = cluster.settings
        base: dict[str, Any] = {
            "kafka": kafka.model_dump(mode="json"),
            "jails": [{"name": "amps", "bantime": 3600}],
            "state_dir": str(Path(tmp) / "state"),
            "metrics": {"port": 0},
            "enforcer": {"backend": "dryrun"},
        }
        config = Path(tmp) / "fleet.yaml"
        config.write_text(yaml.safe_dump(base))
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET2BAN_")}
        log = open(Path(tmp) / "processor.log", "wb")  # noqa: SIM115
        processor = subprocess.Popen(
            [sys.executable, "-m", "fleet2ban.cli.main", "-c", str(config), "processor"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        agents: list[Agent] = []
        threads: list[threading.Thread] = []
        tombstones: dict[bytes, float] = {}
        echoes: dict[bytes, float] = {}

        def feed(kind: str, key: bytes | None, value: bytes | None, _ts: object) -> None:
            if key is None:
                return
            if kind == "bans" and value is None:
                tombstones[key] = time.time()
            elif kind == "deadletter":
                echoes[key] = time.time()

        reader = TopicReader(
            cluster,
            [Source("bans", cluster.topics.bans), Source("deadletter", cluster.topics.deadletter)],
            feed,
        )
        stop = threading.Event()

        def follow() -> None:
            while not stop.is_set():
                reader.poll(0.05)

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        try:
            for i in range(args.enforcers):
                s = load_settings(None, {**base, "enforcer": {"backend": "dryrun", "host": f"e{i}"}})
                agent = Agent(s, cluster, DryRunBackend([JailSpec("amps", (9007,))], s.enforcer))
                agents.append(agent)
                t = threading.Thread(target=agent.run, daemon=True, name=f"enforcer-e{i}")
                t.start()
                threads.append(t)
            settings = load_settings(None, base)
            jail = settings.jails[0]
            producer = Producer(producer_config(cluster, linger_ms=0))

            def ban_all(ips: list[str], timeout: float) -> None:
                now = utcnow()
                bans = [
                    manual_ban_decision(
                        manual_decision_id("ban"), jail, ip, now + timedelta(hours=1), "bench", "bench", now
                    )
                    for ip in ips
                ]
                publish_decisions(cluster, bans)
                keys = [("amps", ip) for ip in ips]
                wait_for(
                    lambda: all(k in a.enforcer.applied for a in agents for k in keys),
                    timeout,
                    "every enforcer to apply the bans (is the processor running?)",
                )

            ban_all(["198.18.255.1"], 120)  # warm-up: the processor has joined and the enforcers follow
            lifted: list[float] = []
            mirrored: list[float] = []
            raw: list[float] = []
            for trial in range(args.trials):
                net = f"198.18.{trial}.0/24"
                ips = [f"198.18.{trial}.{i + 1}" for i in range(args.bans)]
                ban_all(ips, 60)
                keys = [("amps", ip) for ip in ips]
                entry = new_entry(
                    net, jail=None, ttl=None, reason="bench", by="bench", now=utcnow(), jails=["amps"]
                )
                audit = allow_decision(entry, "allow")
                written = time.time()
                producer.produce(cluster.topics.allow, key=entry.key().encode(), value=encode(entry))
                producer.produce(cluster.topics.decisions, key=entry.network.encode(), value=encode(audit))
                producer.flush(10)
                while any(k in a.enforcer.applied for a in agents for k in keys):
                    if time.time() - written > 60:
                        raise SystemExit("the enforcers did not lift the bans within 60 s")
                    time.sleep(0.001)
                lifted.append((time.time() - written) * 1000)
                bkeys = [ban_key("amps", ip).encode() for ip in ips]
                wait_for(lambda ks=bkeys: all(k in tombstones for k in ks), 60, "the processor's tombstones")
                mirrored.append((max(tombstones[k] for k in bkeys) - written) * 1000)
                echo = f"echo-{trial}".encode()
                sent = time.time()
                producer.produce(cluster.topics.deadletter, key=echo, value=b"x")
                producer.flush(10)
                wait_for(lambda e=echo: e in echoes, 30, "the reference record read back")
                raw.append((echoes[echo] - sent) * 1000)
        finally:
            stop.set()
            for a in agents:
                a.stop_event.set()
            for t in threads:
                t.join(10)
            follower.join(5)
            reader.close()
            processor.terminate()
            try:
                processor.wait(15)
            except subprocess.TimeoutExpired:
                processor.kill()
    print(
        f"{args.trials} allow-list entries, each covering {args.bans} bans in force; {args.enforcers} dry-run "
        f"enforcers, 1 processor, local 3-node Kafka (acks=all)"
    )
    print(f"{'':48} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    rows = (
        ("entry -> bans lifted on every enforcer", lifted),
        ("entry -> processor's unbans (tombstones on bans)", mirrored),
        ("reference: produce -> consume", raw),
    )
    for label, xs in rows:
        print(f"{label:48} {pct(xs, 50):8.1f} {pct(xs, 99):8.1f} {max(xs):8.1f}")
    print(
        f"{'ratio: lifted everywhere / reference':48} {pct(lifted, 50) / pct(raw, 50):7.2f}x "
        f"{pct(lifted, 99) / pct(raw, 99):7.2f}x"
    )
    return 0
