"""The notifier end to end on the local Kafka: decisions written to ``decisions`` reach a local HTTP
receiver (generic JSON with its HMAC signature, Slack), and a local SMTP server (aiosmtpd); a failing
destination is retried without holding the others up; a flood becomes digests; a decision read twice is
sent once; offsets are committed only once every destination delivered."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from fleet2ban.contract import Decision, encode, utcnow
from fleet2ban.kafka import Cluster, consumer_config, end_offsets, producer_config
from fleet2ban.kafka.local import free_port
from fleet2ban.notify.agent import Notifier
from fleet2ban.settings import load_settings
from fleet2ban.waiting import wait_for

pytestmark = pytest.mark.kafka

SECRET = "s3cret"


def ban(ip: str, at: datetime, *, secs: float = 120.0, did: str | None = None) -> Decision:
    return Decision(
        id=did or f"b-{ip}-{int(at.timestamp())}",
        action="ban",
        ip=ip,
        jail="amps",
        at=at,
        ports=[9007],
        expires_at=at + timedelta(seconds=secs),
        failures=20,
        hosts=["h1", "h2"],
        ban_count=1,
    )


def unban(ip: str, at: datetime) -> Decision:
    return Decision(id=f"u-{ip}-{int(at.timestamp())}", action="unban", ip=ip, jail="amps", at=at)


class Writer:
    def __init__(self, cluster: Cluster) -> None:
        self.topic = cluster.topics.decisions
        self.producer = Producer({**producer_config(cluster, linger_ms=5), "log_level": 0})

    def decision(self, d: Decision, ts: datetime | None = None) -> None:
        self.producer.produce(self.topic, key=d.ip.encode(), value=encode(d))

    def flush(self) -> None:
        assert self.producer.flush(10) == 0


@dataclass
class Receiver:
    """A local HTTP server recording every POST; ``/fail`` answers 500 ``fail_first`` times."""

    fail_first: int = 3
    got: list[tuple[str, dict[str, str], bytes, float]] = field(default_factory=list)
    failed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> ThreadingHTTPServer:
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with rec.lock:
                    if self.path == "/fail" and rec.failed < rec.fail_first:
                        rec.failed += 1
                        code = 500
                    else:
                        code = 200
                        rec.got.append((self.path, dict(self.headers), body, time.time()))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def on(self, path: str) -> list[tuple[dict[str, str], bytes, float]]:
        with self.lock:
            return [(h, b, t) for p, h, b, t in self.got if p == path]


@pytest.fixture
def smtp() -> Iterator[Any]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    class Inbox(Message):
        def __init__(self) -> None:
            super().__init__()
            self.messages: list[Any] = []

        def handle_message(self, message: Any) -> None:
            self.messages.append(message)

    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield controller, inbox
    finally:
        controller.stop()


def _slack_total(rec: Receiver) -> int:
    """Decisions announced on Slack: a digest's headline says how many it stands for."""
    total = 0
    for _h, b, _t in rec.on("/slack"):
        head = json.loads(b)["text"].splitlines()[0]
        m = re.match(r"fleet2ban: (\d+) decisions", head)
        total += int(m.group(1)) if m else 1
    return total


def _committed(cluster: Cluster, group: str) -> dict[int, int]:
    c = Consumer(consumer_config(cluster, group_id=group, **{"enable.auto.commit": False}))
    try:
        parts = [TopicPartition(cluster.topics.decisions, p) for p in range(cluster.settings.partitions)]
        return {tp.partition: tp.offset for tp in c.committed(parts, timeout=10)}
    finally:
        c.close()


def test_decisions_reach_every_destination_once_retried_digested_and_committed_after_delivery(
    cluster: Cluster, smtp: Any
) -> None:
    controller, inbox = smtp
    rec = Receiver()
    server = rec.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    settings = load_settings(
        None,
        {
            "kafka.bootstrap_servers": cluster.bootstrap,
            "kafka.topic_prefix": cluster.settings.topic_prefix,
            "kafka.partitions": cluster.settings.partitions,
            "metrics.heartbeat_interval_s": 0.5,
            "notifier.from_start": True,
            "notifier.retry_initial_s": 0.1,
            "notifier.retry_max_s": 0.4,
            "notifier.smtp": {"host": "127.0.0.1", "port": controller.port, "starttls": False},
            "notifier.destinations": [
                {"name": "hook", "url": f"{base}/hook", "secret": SECRET, "digest_interval_s": 0},
                {
                    "name": "slack",
                    "kind": "slack",
                    "url": f"{base}/slack",
                    "actions": ["ban"],
                    "digest_interval_s": 1,
                },
                {"name": "flaky", "url": f"{base}/fail", "digest_interval_s": 0},
                {"name": "mail", "kind": "email", "to": ["ops@example.org"], "digest_interval_s": 2},
            ],
        },
    )
    notifier = Notifier(settings, cluster)
    thread = threading.Thread(target=notifier.run, daemon=True)
    thread.start()
    group = f"{cluster.settings.topic_prefix}{settings.notifier.group_id}"
    w = Writer(cluster)
    try:
        now = utcnow()
        first = ban("203.0.113.1", now, secs=120)
        w.decision(first, ts=now)
        w.decision(first, ts=now)  # re-emitted: sent once
        w.decision(unban("203.0.113.1", now + timedelta(seconds=1)), ts=now)
        w.flush()
        wait_for(lambda: len(rec.on("/hook")) >= 2, 30, "the ban and the unban at the webhook")
        hook = rec.on("/hook")
        ids = [json.loads(b)["decisions"][0]["id"] for _h, b, _t in hook]
        assert sorted(ids) == sorted(
            [first.id, f"u-203.0.113.1-{int((now + timedelta(seconds=1)).timestamp())}"]
        )
        for h, b, _t in hook:
            want = "sha256=" + hmac.new(SECRET.encode(), b, hashlib.sha256).hexdigest()
            assert h["X-Fleet2ban-Signature"] == want
        # the flaky destination failed 3 times, was retried, and delivered both, in order
        wait_for(lambda: len(rec.on("/fail")) >= 2, 30, "the flaky destination to recover")
        assert rec.failed == 3
        wait_for(lambda: len(rec.on("/slack")) == 1, 30, "the ban (only) on Slack")
        assert "ban 203.0.113.1 in jail amps for 2m" in json.loads(rec.on("/slack")[0][1])["text"]
        wait_for(lambda: len(inbox.messages) == 1, 30, "the e-mail")
        assert inbox.messages[0]["Subject"].startswith("fleet2ban: ")
        assert "ban 203.0.113.1 in jail amps for 2m" in inbox.messages[0].get_payload()

        # a flood: each decision alone to the hook; Slack gets digests, at most one per second
        t0 = time.time()
        flood = [ban(f"198.51.100.{i % 250 + 1}", utcnow(), did=f"flood-{i}") for i in range(150)]
        for d in flood:
            w.decision(d, ts=d.at)
        w.flush()
        wait_for(lambda: len(rec.on("/hook")) >= 152, 60, "every flood decision at the webhook")
        wait_for(lambda: _slack_total(rec) >= 151, 60, "the flood on Slack (in digests)")
        slack_msgs = [t for _h, _b, t in rec.on("/slack") if t >= t0]
        assert len(slack_msgs) <= (max(slack_msgs) - t0) / 1.0 + 2, "at most one Slack message per second"
        delays = sorted(
            t - flood_at
            for _h, b, t in rec.on("/hook")
            for d in json.loads(b)["decisions"]
            if d["id"].startswith("flood-")
            for flood_at in [next(x.at.timestamp() for x in flood if x.id == d["id"])]
        )
        print(
            f"decision -> webhook under a 150-decision flood: p50 {statistics.median(delays) * 1000:.0f} ms"
        )

        # everything delivered everywhere: the group's offsets reach the end of decisions
        ends = {p: hi for p, (_lo, hi) in end_offsets(cluster, cluster.topics.decisions).items()}
        wait_for(
            lambda: all(_committed(cluster, group).get(p, -1) >= hi for p, hi in ends.items() if hi),
            30,
            "commits",
        )
    finally:
        notifier.stop_event.set()
        thread.join(15)
        server.shutdown()


def test_undelivered_decisions_are_not_committed_and_are_sent_after_a_restart(cluster: Cluster) -> None:
    rec = Receiver(fail_first=10**9)  # the destination is down
    server = rec.start()
    overrides = {
        "kafka.bootstrap_servers": cluster.bootstrap,
        "kafka.topic_prefix": cluster.settings.topic_prefix,
        "kafka.partitions": cluster.settings.partitions,
        "notifier.from_start": True,
        "notifier.retry_initial_s": 0.1,
        "notifier.retry_max_s": 0.2,
        "notifier.destinations": [
            {
                "name": "down",
                "url": f"http://127.0.0.1:{server.server_address[1]}/fail",
                "digest_interval_s": 0,
            }
        ],
    }
    group = f"{cluster.settings.topic_prefix}fleet2ban-notifier"
    w = Writer(cluster)
    d = ban("203.0.113.200", utcnow())
    w.decision(d, ts=d.at)
    w.flush()
    first = Notifier(load_settings(None, overrides), cluster)
    t = threading.Thread(target=first.run, daemon=True)
    t.start()
    try:
        wait_for(lambda: rec.failed >= 3, 30, "delivery attempts")
        ends = end_offsets(cluster, cluster.topics.decisions)
        (part,) = [p for p, (_lo, hi) in ends.items() if hi]
        assert _committed(cluster, group)[part] <= ends[part][1] - 1, (
            "the undelivered record stays uncommitted"
        )
    finally:
        first.stop_event.set()
        t.join(15)
    rec.fail_first = 0  # the destination is back: a new notifier reads the decision again and sends it
    second = Notifier(load_settings(None, overrides), cluster)
    t2 = threading.Thread(target=second.run, daemon=True)
    t2.start()
    try:
        wait_for(lambda: len(rec.on("/fail")) == 1, 30, "the decision delivered after the restart")
        assert json.loads(rec.on("/fail")[0][1])["decisions"][0]["id"] == d.id
    finally:
        second.stop_event.set()
        t2.join(15)
        server.shutdown()
