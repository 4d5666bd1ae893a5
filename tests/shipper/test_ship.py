"""The producer loop: batching per IP, checkpoints, and shipping to the local Kafka cluster line by line."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest
from ship_helpers import amps_line, append, line_ids, make_settings, read_batches, running, wait_until

from fleet2ban.contract import Line, decode_report
from fleet2ban.kafka import Cluster, read_to_end
from fleet2ban.settings import KafkaSettings
from shipper.parse import iter_file_events
from shipper.ship import ROUND_RECORDS_AT_BASE, AckTracker, Batcher, Shipper
from shipper.tail import load_checkpoint

# ------------------------------------------------------------------------------------------- pure


def _line(i: int) -> Line:
    from datetime import UTC, datetime

    return Line(id=str(i), ts=datetime(2026, 1, 1, tzinfo=UTC), port=1, client="c", reason="auth")


def test_batcher_groups_per_ip_and_sends_every_open_batch_in_one_round_when_the_oldest_is_due() -> None:
    b = Batcher(0.010, max_lines=3)
    _first, new, full = b.add("10.0.0.1", _line(1), (1, 0), now=100.0)
    assert new and not full
    b.add("10.0.0.2", _line(2), (1, 10), now=100.001)
    b.add("10.0.0.1", _line(3), (1, 20), now=100.002)
    assert b.due(100.009) == []
    assert b.next_deadline() == pytest.approx(100.010)
    due = b.due(100.0105)
    assert [(d.ip, [ln.id for ln in d.lines]) for d in due] == [("10.0.0.1", ["1", "3"]), ("10.0.0.2", ["2"])]
    assert b.next_deadline() is None and len(b) == 0
    for i in range(3):
        got, _, full = b.add("10.0.0.3", _line(10 + i), (1, 30 + i), now=100.02)
    assert full and [ln.id for ln in got.lines] == ["10", "11", "12"]
    b.add("10.0.0.4", _line(20), (1, 40), now=100.02)
    assert [d.ip for d in b.drain()] == ["10.0.0.4"]


def test_batcher_skips_batches_that_went_out_full_and_keeps_opening_order() -> None:
    b = Batcher(0.010, max_lines=2)
    b.add("a", _line(1), (1, 0), now=1.000)
    b.add("b", _line(2), (1, 1), now=1.001)
    _, _, full = b.add("a", _line(3), (1, 2), now=1.002)  # a's first batch goes out full
    assert full
    b.add("a", _line(4), (1, 3), now=1.003)  # a's next batch, opened after b's
    assert b.next_deadline() == pytest.approx(1.011)  # b is now the oldest open batch
    assert [(d.ip, [ln.id for ln in d.lines]) for d in b.due(1.012)] == [("b", ["2"]), ("a", ["4"])]
    assert b.next_deadline() is None and len(b) == 0 and b.due(9.0) == []
    # many IPs opened and sent: due() costs what is due, not what went before
    for i in range(20_000):
        b.add(f"ip{i}", _line(i), (1, 10 + i), now=2.0)
        b.add(f"ip{i}", _line(i), (1, 10 + i), now=2.0)  # full at once
    b.add("last", _line(0), (1, 99_999), now=2.0)
    assert [d.ip for d in b.due(2.5)] == ["last"]


def test_batcher_stretches_its_interval_after_large_rounds_and_returns_to_the_base_one() -> None:
    b = Batcher(0.010, max_lines=500, max_interval_s=0.050)
    now = 10.0

    def round_of(n: int) -> list[str]:
        nonlocal now
        for i in range(n):
            b.add(f"10.1.{i // 250}.{i % 250}", _line(i), (1, i), now=now)
        deadline = b.next_deadline()
        assert deadline is not None
        now = deadline
        return [d.ip for d in b.due(now)]

    waited = []
    for n in (2, ROUND_RECORDS_AT_BASE, 3 * ROUND_RECORDS_AT_BASE, 100, 100, 1):
        opened_at = now
        assert len(round_of(n)) == n
        waited.append(round(now - opened_at, 6))
    # small rounds keep the base interval; a round of 3x the base size stretches the next one 3x, a
    # large one up to the maximum; a small round brings the base interval back for the next
    assert waited == [0.010, 0.010, 0.010, 0.030, 0.050, 0.050]
    assert b.interval_s == pytest.approx(0.010) and b.rounds == 6
    # without a maximum above the base, the interval never stretches
    fixed = Batcher(0.010, max_lines=500)
    for i in range(100):
        fixed.add(f"ip{i}", _line(i), (1, i), now=1.0)
    assert len(fixed.due(1.010)) == 100 and fixed.interval_s == pytest.approx(0.010)


def test_ack_tracker_low_water_is_the_oldest_unacked_record() -> None:
    t = AckTracker()
    t.open(1, (1, 0))
    t.open(2, (1, 50))
    t.open(3, (2, 0))
    assert t.low_water((2, 100)) == (1, 0)
    t.ack(2)
    assert t.low_water((2, 100)) == (1, 0)
    t.ack(1)
    assert t.low_water((2, 100)) == (2, 0)
    t.ack(3)
    assert t.low_water((2, 100)) == (2, 100)
    assert len(t) == 0


def test_ack_tracker_takes_records_opened_out_of_order_too() -> None:
    t = AckTracker()
    t.open(1, (1, 100))
    t.open(2, (1, 200))
    t.open(3, (1, 50))  # before the last one opened
    t.open(4, (2, 0))
    assert t.low_water((3, 0)) == (1, 50) and len(t) == 4
    t.ack(3)
    assert t.low_water((3, 0)) == (1, 100)
    t.ack(1)
    t.ack(4)
    assert t.low_water((3, 0)) == (1, 200) and len(t) == 1
    assert t.low_water((1, 150)) == (1, 150)  # never past what was read
    t.ack(2)
    assert t.low_water((3, 0)) == (3, 0) and len(t) == 0


# ------------------------------------------------------------------------------------------ kafka


def expected(path: Path) -> list[str]:
    return [e.id for e in iter_file_events(path, "h1", "amps")]


def check_shipped(cluster: Cluster, path: Path, max_lines: int) -> list:
    batches = read_batches(cluster)
    ids = line_ids(batches)
    want = expected(path)
    assert sorted(ids) == sorted(want), "every line exactly once"
    order = {i: n for n, i in enumerate(want)}
    per_ip: dict[str, list[int]] = defaultdict(list)
    for _part, _off, key, b in sorted(batches, key=lambda x: (x[0], x[1])):
        assert key == b.ip.encode() and b.host == "h1" and b.instance == "amps"
        assert 1 <= len(b.lines) <= max_lines
        per_ip[b.ip] += [order[ln.id] for ln in b.lines]
    for ip, seq in per_ip.items():
        assert seq == sorted(seq), f"{ip}: lines out of file order"
    return batches


@pytest.mark.kafka
def test_ship_a_file_and_read_it_back_line_by_line(
    cluster: Cluster, kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    log = tmp_path / "ban.log"
    lines = []
    for i in range(3000):
        ip = "10.9.0.1" if i % 3 else f"10.8.{i % 251}.{i % 7 + 1}"  # a flood from one IP + background
        lines.append(amps_line(i, ip, "auth" if i % 5 else "connection closed"))
        if i % 100 == 0:
            lines.append(b"2026-11-25T06:00:00.0000000+00:00 [1] info: 00-0015 alive\n")
    lines.append(amps_line(9999, "2001:db8::1"))
    lines.append(b"garbage\n")
    log.write_bytes(b"".join(lines))
    settings = make_settings(kafka_settings, tmp_path, from_start=True, max_lines_per_record=100)
    ship = Shipper(settings, cluster)
    with running(ship):
        wait_until(lambda: ship.stats.events_shipped == 3001, what="3001 events acknowledged")
    batches = check_shipped(cluster, log, 100)
    flood = [b for *_, b in batches if b.ip == "10.9.0.1"]
    assert sum(len(b.lines) for b in flood) == 2000
    assert len(flood) < 2000 / 5, "a flood from one IP is batched"
    assert ship.stats.rejected["malformed"] == 1 and ship.stats.liveness == 30
    cp = load_checkpoint(settings.resolved_state_dir() / "shipper-h1.checkpoint")
    assert cp is not None and cp.offset == log.stat().st_size
    from prometheus_client import REGISTRY

    assert (REGISTRY.get_sample_value("fleet2ban_shipper_events_shipped_total") or 0) >= 3001
    assert ship.batcher.rounds >= 1
    assert (REGISTRY.get_sample_value("fleet2ban_shipper_rounds_total") or 0) >= ship.batcher.rounds
    flush = REGISTRY.get_sample_value("fleet2ban_shipper_flush_interval_seconds")
    assert flush is not None and 0.010 <= flush <= 0.050
    assert (
        REGISTRY.get_sample_value("fleet2ban_shipper_parse_rejected_total", {"kind": "malformed"}) or 0
    ) >= 1
    hbs = [decode_report(m.value) for m in read_to_end(cluster, cluster.topics.reports)]
    assert any(h.role == "shipper" and h.host == "h1" for h in hbs)  # type: ignore[union-attr]


@pytest.mark.kafka
@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "polling"])
def test_live_lines_are_acknowledged_within_tens_of_ms(
    cluster: Cluster, kafka_settings: KafkaSettings, tmp_path: Path, inotify: bool
) -> None:
    log = tmp_path / "ban.log"
    log.write_bytes(amps_line(0, "10.0.0.1"))  # before the start: skipped (starts at the end)
    ship = Shipper(make_settings(kafka_settings, tmp_path, poll_interval_s=0.1), cluster, use_inotify=inotify)
    assert ship.waker.mode == ("inotify" if inotify else "poll")
    delays = []
    with running(ship):
        wait_until(lambda: ship.tailer.current_file_id() is not None, what="file opened")
        for i in range(1, 11):
            t0 = time.monotonic()
            append(log, amps_line(i, f"10.0.1.{i}"))
            wait_until(lambda i=i: ship.stats.events_shipped == i, 5, "ack")
            delays.append(time.monotonic() - t0)
    delays.sort()
    print("ack delays (s):", [round(d, 4) for d in delays])
    # inotify: median well under 100 ms (typically ~20 ms here); polling: within the poll interval.
    assert delays[5] < (0.1 if inotify else 0.3), delays
    assert expected(log)[0] not in line_ids(read_batches(cluster))


class FakeProducer:
    """Holds records until ``release`` is set: a broker that does not answer."""

    def __init__(self, conf: dict) -> None:
        self.pending: list = []
        self.release = False
        self.delivered: list[bytes] = []

    def produce(self, topic: str, value: bytes, key: bytes, on_delivery=None) -> None:  # type: ignore[no-untyped-def]
        self.pending.append((topic, value, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        if not self.release:
            time.sleep(min(timeout, 0.001))
            return 0
        done, self.pending = self.pending, []
        for _topic, value, cb in done:
            if cb is not None:
                self.delivered.append(value)
                cb(None, None)
        return len(done)

    def flush(self, timeout: float = 0) -> int:
        self.poll(0)
        return len(self.pending)

    def purge(self) -> None:
        self.pending.clear()


def test_reading_pauses_while_the_queue_is_full_then_resumes(tmp_path: Path) -> None:
    """Memory stays bounded while the broker does not acknowledge; nothing is lost once it does."""
    log = tmp_path / "ban.log"
    log.write_bytes(b"".join(amps_line(i, f"10.3.{i % 50}.1") for i in range(2000)))
    settings = make_settings(
        KafkaSettings(bootstrap_servers="127.0.0.1:1", topic_prefix="x."),
        tmp_path,
        from_start=True,
        max_pending_lines=100,
    )
    fakes: list[FakeProducer] = []

    def factory(conf: dict) -> FakeProducer:
        fakes.append(FakeProducer(conf))
        return fakes[-1]

    ship = Shipper(settings, Cluster(settings.kafka, "127.0.0.1:1"), producer_factory=factory)
    with running(ship):
        wait_until(lambda: ship.paused, what="reading paused")
        peak = ship.pending_lines
        assert 100 <= peak < 400, peak  # the bound, overshot by at most one small read
        assert ship.stats.lines < 2000
        fakes[-1].release = True
        wait_until(lambda: ship.stats.events_shipped == 2000, what="all shipped after release")
        assert not ship.paused
    from fleet2ban.contract import decode_batch

    shipped = [ln.id for v in fakes[-1].delivered if b'"lines"' in v for ln in decode_batch(v).lines]
    assert sorted(shipped) == sorted(expected(log))


def test_shipper_with_an_operators_fail2ban_filter(tmp_path: Path) -> None:
    from fleet2ban.contract import decode_batch
    from shipper.f2bfilter import load_filter

    log = tmp_path / "ban.log"
    log.write_bytes(amps_line(1, "10.4.0.1") + amps_line(2, "10.4.0.2", "connection closed"))
    settings = make_settings(
        KafkaSettings(bootstrap_servers="127.0.0.1:1", topic_prefix="x."), tmp_path, from_start=True
    )
    fakes: list[FakeProducer] = []

    def factory(conf: dict) -> FakeProducer:
        fakes.append(FakeProducer(conf))
        fakes[-1].release = True
        return fakes[-1]

    flt = load_filter(Path(__file__).parent.parent / "data" / "seed-amps.conf", warn=False)
    ship = Shipper(
        settings, Cluster(settings.kafka, "127.0.0.1:1"), parser=flt, producer_factory=factory
    )
    with running(ship):
        wait_until(lambda: ship.stats.events_shipped == 1, what="the auth line shipped")
    batches = [decode_batch(v) for v in fakes[-1].delivered if b'"lines"' in v]
    assert [(b.ip, b.lines[0].reason) for b in batches] == [("10.4.0.1", "auth")]
    assert ship.stats.rejected["no-match"] == 1
