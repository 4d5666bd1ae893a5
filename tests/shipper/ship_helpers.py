"""Builders and waits shared by the shipper's Kafka tests."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fleet2ban import waiting
from fleet2ban.contract import EventsRecord, decode_events_record
from fleet2ban.kafka import Cluster, read_to_end
from fleet2ban.settings import KafkaSettings, Settings, ShipperSettings
from shipper.ship import Shipper

T0 = datetime(2026, 11, 25, 6, 0, 0, tzinfo=UTC)


def amps_line(i: int, ip: str, reason: str = "auth", name: str | None = None) -> bytes:
    ts = (T0 + timedelta(microseconds=137 * i)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0+00:00"
    client = name if name is not None else f"client-{i}"
    host = f"[{ip}]" if ":" in ip else ip
    return f"{ts} [7] info: 07-0013 client[{client}]({host}:{1024 + i % 60000}) disconnected: {reason}.\n".encode()


def append(path: Path, data: bytes) -> None:
    with open(path, "ab") as f:
        f.write(data)


def wait_until(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    waiting.wait_for(cond, timeout, what, every=0.01)


def make_settings(kafka: KafkaSettings, tmp: Path, **shipper: Any) -> Settings:
    return Settings(
        kafka=kafka,
        shipper=ShipperSettings(log_path=tmp / "ban.log", host="h1", instance="amps", **shipper),
        state_dir=tmp / "state",
    )


@contextlib.contextmanager
def running(ship: Shipper) -> Iterator[Shipper]:
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            ship.run(stop)
        except BaseException as exc:  # surfaced to the test
            errors.append(exc)

    t = threading.Thread(target=target, name="shipper", daemon=True)
    t.start()
    try:
        yield ship
    finally:
        stop.set()
        t.join(30)
        assert not t.is_alive(), "shipper did not stop"
        if errors:
            raise errors[0]


def read_batches(cluster: Cluster, topic: str | None = None) -> list[tuple[int, int, bytes, EventsRecord]]:
    """(partition, offset, key, record) of every events record."""
    out = []
    for msg in read_to_end(cluster, topic or cluster.topics.events, timeout=30):
        out.append((msg.partition, msg.offset, msg.key, decode_events_record(msg.value)))
    return out


def line_ids(batches: list[tuple[int, int, bytes, EventsRecord]]) -> list[str]:
    return [ln.id for *_, b in batches for ln in b.lines]
