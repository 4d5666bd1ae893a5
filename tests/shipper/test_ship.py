"""The producer loop: batching per IP, checkpoints, and shipping to the local Kafka cluster line by line."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pytest
from ship_helpers import amps_line, append, line_ids, make_settings, read_batches, running, wait_until

from fleet2ban.contract import (
    AddressLine,
    EventsRecord,
    decode_events_record,
    decode_report,
    encode,
    events_partition,
    partition_for,
)
from fleet2ban.kafka import Cluster, read_to_end
from fleet2ban.settings import KafkaSettings
from shipper.parse import iter_file_events
from shipper.ship import ROUND_LINES_AT_BASE, AckTracker, Batcher, Shipper
from shipper.tail import load_checkpoint

# ------------------------------------------------------------------------------------------- pure


def _line(i: int, ip: str = "10.0.0.1", raw: str = "") -> AddressLine:
    from datetime import UTC, datetime

    return AddressLine(
        ip=ip, id=str(i), ts=datetime(2026, 1, 1, tzinfo=UTC), port=1, client="c", reason="auth", raw=raw
    )


def _ips_of(partitions: int, part: int, n: int) -> list[str]:
    """``n`` addresses whose events partition is ``part``."""
    out = [ip for i in range(5000) if partition_for(ip := f"10.0.{i // 250}.{i % 250}", partitions) == part]
    return out[:n]


def test_batcher_groups_per_partition_and_sends_every_open_batch_in_one_round_when_the_oldest_is_due() -> (
    None
):
    b = Batcher(0.010, max_lines=3, partitions=4)
    a1, a2 = _ips_of(4, 1, 2)
    (c1,) = _ips_of(4, 2, 1)
    b.add(_line(0, c1), (1, 0), now=100.0)
    assert [d.partition for d in b.due(100.0, idle=True)] == [2]  # idle: at once
    first, new, full = b.add(_line(1, a1), (1, 0), now=100.0)
    assert new and not full and first.key == a1.encode() and first.partition == 1
    b.add(_line(2, c1), (1, 10), now=100.001)
    _, new, _ = b.add(_line(3, a2), (1, 20), now=100.002)
    assert not new  # another address of the same partition joins the same record
    assert b.due(100.009) == [] and b.due(100.009, idle=True) == []  # a round went less than 10 ms ago
    assert b.next_deadline() == pytest.approx(100.010)
    due = b.due(100.0105)
    assert [(d.partition, [(ln.ip, ln.id) for ln in d.lines]) for d in due] == [
        (1, [(a1, "1"), (a2, "3")]),
        (2, [(c1, "2")]),
    ]
    assert b.next_deadline() is None and len(b) == 0
    for i in range(3):
        got, _, full = b.add(_line(10 + i, (a1, a2)[i % 2]), (1, 30 + i), now=100.02)
    assert full and [ln.id for ln in got.lines] == ["10", "11", "12"]
    b.add(_line(20, c1), (1, 40), now=100.02)
    assert [d.partition for d in b.drain()] == [2]


def test_batcher_bounds_a_record_by_its_size_too() -> None:
    b = Batcher(0.010, max_lines=10_000, partitions=1, max_bytes=8 * 1024)
    n = 0
    while True:
        got, _, full = b.add(_line(n, f"10.1.0.{n % 200}", raw="x" * 400), (1, n), now=1.0)
        n += 1
        if full:
            break
    value = encode(EventsRecord(host="h", lines=got.lines))
    assert got.size >= 8 * 1024 * 0.8 and len(value) <= got.size <= 8 * 1024 + 1024
    assert len(got.lines) == n < 30


def test_batcher_while_busy_waits_for_the_deadline_and_idle_sends_at_once() -> None:
    b = Batcher(5.0, max_lines=100, partitions=2)
    b.add(_line(1), (1, 0), now=10.0)
    # records in flight (not idle): the round waits for the oldest batch's deadline
    assert b.due(10.0, idle=False) == [] and b.next_deadline(idle=False) == pytest.approx(15.0)
    assert len(b.due(10.0, idle=True)) == 1  # nothing in flight, no round for long: at once
    b.add(_line(2), (1, 1), now=10.5)
    # a round went 0.5 s ago: under load lines gather even with nothing in flight
    assert b.due(10.5, idle=True) == [] and b.next_deadline(idle=True) == pytest.approx(15.0)
    assert len(b.due(15.0, idle=True)) == 1


def test_batcher_skips_batches_that_went_out_full_and_keeps_opening_order() -> None:
    b = Batcher(0.010, max_lines=2, partitions=3)
    pa, pb = _ips_of(3, 0, 1)[0], _ips_of(3, 1, 1)[0]
    b.add(_line(1, pa), (1, 0), now=1.000)
    b.add(_line(2, pb), (1, 1), now=1.001)
    _, _, full = b.add(_line(3, pa), (1, 2), now=1.002)  # pa's first batch goes out full
    assert full
    b.add(_line(4, pa), (1, 3), now=1.003)  # pa's partition's next batch, opened after pb's
    assert b.next_deadline() == pytest.approx(1.011)  # pb's is now the oldest open batch
    assert [(d.key, [ln.id for ln in d.lines]) for d in b.due(1.012)] == [
        (pb.encode(), ["2"]),
        (pa.encode(), ["4"]),
    ]
    assert b.next_deadline() is None and len(b) == 0 and b.due(9.0) == []
    # many batches opened and sent: due() costs what is due, not what went before
    for i in range(20_000):
        b.add(_line(i, pa), (1, 10 + i), now=2.0)
        b.add(_line(i, pa), (1, 10 + i), now=2.0)  # full at once
    b.add(_line(0, pb), (1, 99_999), now=2.0)
    assert [d.key for d in b.due(2.5)] == [pb.encode()]


def test_batcher_stretches_its_interval_after_large_rounds_and_returns_to_the_base_one() -> None:
    b = Batcher(0.010, max_lines=500, max_interval_s=0.050, partitions=1000)
    now = 10.0
    ips = [f"10.1.{i // 250}.{i % 250}" for i in range(5000)]
    by_part: dict[int, str] = {}
    for ip in ips:
        by_part.setdefault(partition_for(ip, 1000), ip)
    distinct = list(by_part.values())  # one address per partition: one record each

    def round_of(n: int) -> list[int]:
        nonlocal now
        for i in range(n):
            b.add(_line(i, distinct[i]), (1, i), now=now)
        deadline = b.next_deadline()
        assert deadline is not None
        now = deadline
        return [d.partition for d in b.due(now)]

    waited = []
    for n in (2, ROUND_LINES_AT_BASE, 3 * ROUND_LINES_AT_BASE, 100, 100, 1):
        opened_at = now
        assert len(round_of(n)) == n
        waited.append(round(now - opened_at, 6))
    # small rounds keep the base interval; a round of 3x the base size stretches the next one 3x, a
    # large one up to the maximum; a small round brings the base interval back for the next
    assert waited == [0.010, 0.010, 0.010, 0.030, 0.050, 0.050]
    assert b.interval_s == pytest.approx(0.010) and b.rounds == 6
    # lines count, not records: 24 lines of one address (one record) stretch the next round 3x
    for i in range(3 * ROUND_LINES_AT_BASE):
        b.add(_line(i, distinct[0]), (2, i), now=now)
    assert len(b.due(now + 0.010)) == 1 and b.interval_s == pytest.approx(0.030)
    # without a maximum above the base, the interval never stretches
    fixed = Batcher(0.010, max_lines=500, partitions=1000)
    for i in range(100):
        fixed.add(_line(i, distinct[i]), (1, i), now=1.0)
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
    n = cluster.settings.partitions
    for part, _off, key, b in sorted(batches, key=lambda x: (x[0], x[1])):
        # keyed by its first address; every address it holds is of the partition it is in
        assert key == b.lines[0].ip.encode() and b.host == "h1" and b.instance == "amps"
        assert {events_partition(ln.ip, n, cluster.settings.partition_prefix_v6) for ln in b.lines} == {part}
        assert 1 <= len(b.lines) <= max_lines
        for ln in b.lines:
            per_ip[ln.ip].append(order[ln.id])
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
    flood = [b for *_, b in batches if any(ln.ip == "10.9.0.1" for ln in b.lines)]
    assert sum(ln.ip == "10.9.0.1" for *_, b in batches for ln in b.lines) == 2000
    assert len(flood) < 2000 / 5, "a flood from one IP is batched"
    # the background addresses share records with others of their partition
    assert len(batches) < 3001 / 5
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
        self.produced: list[bytes] = []

    def produce(
        self, topic: str, value: bytes, key: bytes, partition=-1, on_delivery=None, headers=None, timestamp=0
    ) -> None:  # type: ignore[no-untyped-def]
        self.pending.append((topic, value, on_delivery))
        self.produced.append(value)

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
    shipped = [ln.id for v in fakes[-1].delivered if b'"lines"' in v for ln in decode_events_record(v).lines]
    assert sorted(shipped) == sorted(expected(log))


def test_shipper_with_an_operators_fail2ban_filter(tmp_path: Path) -> None:
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
    ship = Shipper(settings, Cluster(settings.kafka, "127.0.0.1:1"), parser=flt, producer_factory=factory)
    with running(ship):
        wait_until(lambda: ship.stats.events_shipped == 1, what="the auth line shipped")
    batches = [decode_events_record(v) for v in fakes[-1].delivered if b'"lines"' in v]
    assert [(ln.ip, ln.reason) for b in batches for ln in b.lines] == [("10.4.0.1", "auth")]
    assert ship.stats.rejected["no-match"] == 1


def test_a_lone_line_is_handed_to_the_producer_at_once_and_lines_gather_while_one_is_in_flight(
    tmp_path: Path,
) -> None:
    """Issue 17: no fixed flush delay when idle. With a 10 s flush interval, a line read while nothing
    is in flight reaches the producer in the very step that read it; lines written within the interval
    after that round are not even read (no wake-up per write under load), and go together, in one round,
    once the interval has passed."""
    log = tmp_path / "ban.log"
    log.write_bytes(b"")
    settings = make_settings(
        KafkaSettings(bootstrap_servers="127.0.0.1:1", topic_prefix="x."),
        tmp_path,
        flush_interval_ms=10_000,
        max_flush_interval_ms=10_000,
        poll_interval_s=0.01,
    )
    fakes: list[FakeProducer] = []

    def factory(conf: dict) -> FakeProducer:
        fakes.append(FakeProducer(conf))
        return fakes[-1]

    ship = Shipper(
        settings, Cluster(settings.kafka, "127.0.0.1:1"), producer_factory=factory, use_inotify=False
    )
    try:
        ship.step()  # opens the (empty) file
        append(log, amps_line(1, "10.5.0.1"))
        ship.step()

        def produced() -> list[bytes]:
            return [v for v in fakes[-1].produced if b'"lines"' in v]  # not the heartbeats

        (first,) = produced()
        assert [ln.ip for ln in decode_events_record(first).lines] == ["10.5.0.1"]
        # in flight (the fake broker does not answer) and within the interval: the next lines wait
        append(log, amps_line(2, "10.5.0.2") + amps_line(3, "10.5.0.3"))
        for _ in range(3):
            ship.step()
        assert len(produced()) == 1 and ship.stats.events == 1
        # acknowledged, but a round went less than the interval ago: still waiting (load)
        fakes[-1].release = True
        ship.step()
        assert ship.stats.events_shipped == 1 and len(produced()) == 1 and ship.stats.events == 1
        # the interval has passed: both waiting lines are read and go at once, in one round
        ship.batcher.last_round -= 10.0
        ship.step()
        assert ship.stats.events == 3
        later = [ln.ip for v in produced()[1:] for ln in decode_events_record(v).lines]
        assert sorted(later) == ["10.5.0.2", "10.5.0.3"]
        assert ship.batcher.rounds == 2
    finally:
        ship.shutdown(timeout=1.0)


@pytest.mark.kafka
def test_a_line_after_an_unterminated_record_is_suspect_across_separate_reads(
    cluster: Cluster, kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    """A client name with a newline (were AMPS not to escape it) cut over two writes, so two reads: the
    forged line in the second is rejected as suspect, not shipped; the lines after it are shipped."""
    log = tmp_path / "ban.log"
    log.write_bytes(b"")
    ship = Shipper(make_settings(kafka_settings, tmp_path, from_start=True), cluster)
    head = amps_line(1, "10.9.0.1").split(b"client[")[0] + b"client[evil\n"
    forged = amps_line(2, "203.0.113.66")
    with running(ship):
        append(log, amps_line(0, "10.9.0.0") + head)
        wait_until(lambda: ship.stats.events_shipped == 1, what="the first line shipped")
        append(log, forged)
        append(log, amps_line(3, "10.9.0.3"))
        wait_until(lambda: ship.stats.events_shipped == 2, what="the line after the forged one")
    shipped = {ln.ip for *_, b in read_batches(cluster) for ln in b.lines}
    assert shipped == {"10.9.0.0", "10.9.0.3"}, "the forged line is never an event"
    assert ship.stats.rejected["suspect"] == 1
