"""Notifier: decision written -> webhook received (p50/p99), against a bare produce -> consume round trip.

On a local 3-node Kafka (acks=all): ``--decisions`` decisions written one by one ``--gap`` s apart to
``decisions``; a notifier with one webhook destination (``digest_interval_s: 0``) posts each to a local
HTTP receiver. The reference, measured in the same run: the same records produced and read back by a
plain confluent-kafka consumer (what any Kafka-based notifier pays before its own work).

Usage: python -m bench notify [--decisions N] [--gap S]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from confluent_kafka import Producer

from bench._kafka import bench_cluster
from fleet2ban.contract import Decision, encode, utcnow
from fleet2ban.kafka import Source, TopicReader, producer_config
from fleet2ban.notify.agent import Notifier
from fleet2ban.settings import load_settings
from fleet2ban.waiting import wait_for


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench notify", description=__doc__)
    ap.add_argument("--decisions", type=int, default=100)
    ap.add_argument("--gap", type=float, default=0.05)
    args = ap.parse_args(argv)
    got: dict[str, float] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            for d in json.loads(body)["decisions"]:
                got[d["id"]] = time.time()
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *a: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with bench_cluster() as broker:
        cluster = broker.fresh_topics("n")
        kafka = cluster.settings
        settings = load_settings(
            None,
            {
                "kafka": kafka.model_dump(mode="json"),
                "notifier.from_start": True,
                "notifier.destinations": [
                    {
                        "name": "hook",
                        "url": f"http://127.0.0.1:{server.server_address[1]}/",
                        "digest_interval_s": 0,
                    }
                ],
            },
        )
        notifier = Notifier(settings, cluster)
        t = threading.Thread(target=notifier.run, daemon=True)
        t.start()
        seen_raw: dict[bytes, float] = {}
        reader = TopicReader(
            cluster,
            [Source("decisions", cluster.topics.decisions)],
            lambda _k, key, _v, _ts: seen_raw.__setitem__(key or b"", time.time()),
        )
        reader.catch_up(30)
        stop = threading.Event()

        def follow() -> None:
            while not stop.is_set():
                reader.poll(0.1)

        ft = threading.Thread(target=follow, daemon=True)
        ft.start()
        producer = Producer(producer_config(cluster, linger_ms=0))
        warm = Decision(id="warm", action="ban", ip="203.0.113.250", jail="amps", at=utcnow())
        producer.produce(cluster.topics.decisions, key=b"warm", value=encode(warm))
        producer.flush(10)
        wait_for(lambda: "warm" in got, 60, "the notifier to deliver a first decision")
        written: dict[str, float] = {}
        for i in range(args.decisions):
            now = utcnow()
            d = Decision(
                id=f"d{i}",
                action="ban",
                ip=f"198.51.100.{i % 250 + 1}",
                jail="amps",
                at=now,
                expires_at=now + timedelta(minutes=2),
                failures=20,
                hosts=["h1"],
            )
            written[d.id] = time.time()
            producer.produce(cluster.topics.decisions, key=d.id.encode(), value=encode(d))
            producer.flush(10)
            time.sleep(args.gap)
        wait_for(lambda: all(k in got for k in written), 60, "every decision at the webhook")
        wait_for(lambda: all(k.encode() in seen_raw for k in written), 60, "every record read back")
        stop.set()
        ft.join(5)
        reader.close()
        notifier.stop_event.set()
        t.join(15)
    server.shutdown()
    hook = [(got[k] - w) * 1000 for k, w in written.items()]
    raw = [(seen_raw[k.encode()] - w) * 1000 for k, w in written.items()]
    print(f"{args.decisions} decisions, {args.gap * 1000:.0f} ms apart, local 3-node Kafka (acks=all)")
    print(f"{'':38} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for label, xs in (("decision written -> webhook received", hook), ("reference: produce -> consume", raw)):
        print(f"{label:38} {pct(xs, 50):8.1f} {pct(xs, 99):8.1f} {max(xs):8.1f}")
    print(
        f"{'ratio to the reference':38} {pct(hook, 50) / pct(raw, 50):7.2f}x {pct(hook, 99) / pct(raw, 99):7.2f}x"
    )
    return 0
