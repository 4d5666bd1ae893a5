"""A shipper on a host whose clock runs ahead (issue 16), on the real broker: Kafka 4 refuses records
timestamped more than ``message.timestamp.after.max.ms`` (one hour) ahead with INVALID_TIMESTAMP. The
shipper says so (metric, health, its heartbeat and ``fleet2ban status``, one log line however many
refusals), holds its lines, and delivers them once the clock is right again."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from ship_helpers import amps_line, append, make_settings, read_batches, running, wait_until

from fleet2ban.contract import Heartbeat, decode_report
from fleet2ban.kafka import Cluster, read_to_end
from fleet2ban.settings import KafkaSettings
from shipper.ship import Shipper

pytestmark = pytest.mark.kafka

SKEW_S = 2 * 3600.0


def _gauge() -> float | None:
    return REGISTRY.get_sample_value("fleet2ban_shipper_clock_ahead")


def _heartbeats(cluster: Cluster) -> list[tuple[int | None, Heartbeat]]:
    out = []
    for rec in read_to_end(cluster, cluster.topics.reports, timeout=30):
        hb = decode_report(rec.value)
        if isinstance(hb, Heartbeat) and hb.role == "shipper":
            out.append((rec.ts_ms, hb))
    return out


def test_a_clock_ahead_is_surfaced_held_and_delivered_once_fixed(
    cluster: Cluster, kafka_settings: KafkaSettings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(kafka_settings, tmp_path, from_start=True)
    settings.metrics.heartbeat_interval_s = 0.2
    skew = [SKEW_S]
    append(settings.shipper.log_path, b"".join(amps_line(i, "203.0.113.5") for i in range(3)))  # type: ignore[arg-type]
    ship = Shipper(settings, cluster, use_inotify=False, clock=lambda: time.time() + skew[0])
    with caplog.at_level(logging.INFO, logger="shipper.ship"), running(ship):
        wait_until(
            lambda: ship.clock_ahead and ship.stats.clock_rejected >= 5, 60, "records refused as future"
        )
        assert _gauge() == 1.0
        healthy, detail = ship.health()
        assert detail["clock_ahead"] is True and detail["delivering"] is False
        assert healthy and "clock runs ahead" in detail["waiting"]  # a restart would not fix the clock
        assert ship.stats.events_shipped == 0 and read_batches(cluster) == []

        # the heartbeat saying so gets through, its record dated within the hour ahead readers look at
        def ahead_heartbeat() -> tuple[int | None, Heartbeat] | None:
            got = [(ts, hb) for ts, hb in _heartbeats(cluster) if hb.counters.get("clock_ahead") == 1.0]
            return got[-1] if got else None

        ts_ms, hb = wait_until_value(ahead_heartbeat, 60, "a heartbeat reporting the clock ahead")
        assert hb.counters["clock_rejected"] >= 1
        assert ts_ms is not None and 0 < ts_ms / 1000 - time.time() <= 3600

        # fleet2ban status names it
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET2BAN_")}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "fleet2ban.cli.main",
                "-b",
                cluster.bootstrap,
                "--topic-prefix",
                cluster.settings.topic_prefix,
                "status",
            ],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        out = done.stdout + done.stderr
        assert done.returncode == 1 and "shipper h1: its clock runs ahead" in out and "Clock ahead" in out, (
            out
        )

        # NTP fixes the clock: the held lines go out, and the shipper says it is right again
        skew[0] = 0.0
        wait_until(
            lambda: ship.stats.events_shipped == 3 and not ship.clock_ahead, 60, "delivery after the fix"
        )
        assert _gauge() == 0.0
    said = [r for r in caplog.records if "runs ahead of the brokers'" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]  # one line, not one per refusal or retry
    assert any("timestamps again" in r.getMessage() for r in caplog.records)
    assert sum(len(rec.lines) for *_, rec in read_batches(cluster)) == 3


def wait_until_value(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    from fleet2ban.waiting import wait_for

    return wait_for(check, timeout, what, every=0.1)
