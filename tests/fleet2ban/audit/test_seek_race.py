"""``bans add --wait`` and ``bans history --since`` on real Kafka, with a record written during the seek.

A time seek asks each partition's end, then ``offsets_for_times``; Kafka answers -1 for a partition
with nothing at or after the time, and the reader then starts at the end it had *before* the question
(``fleet2ban.kafka.reader._offsets_for_time``). These tests wrap the reader's consumer so that a record
is written exactly inside that seek -- between the two calls, or right after ``offsets_for_times``
answered -1 -- and prove it is read: the processor's mirror of ``bans add``, and a decision that
``bans history`` must list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import msgspec
import pytest
from audit_helpers import Writer, ban
from typer.testing import CliRunner

from fleet2ban.cli.main import app
from fleet2ban.contract import BanState, ban_key, decode_decision, encode, utcnow
from fleet2ban.kafka import Cluster, read_to_end, reader

pytestmark = pytest.mark.kafka

Inject = Callable[[], None]


class SeekSpy:
    """Wraps the consumer ``_offsets_for_time`` is given; runs ``inject`` once, inside the seek of
    ``topic``: ``between`` the end offsets and ``offsets_for_times``, or ``after`` its answer."""

    def __init__(self, consumer: Any, topic: str, when: str, inject: Inject, answers: list[int]) -> None:
        self._consumer, self._topic, self._when, self._inject = consumer, topic, when, inject
        self._answers = answers

    def get_watermark_offsets(self, *a: Any, **k: Any) -> Any:
        return self._consumer.get_watermark_offsets(*a, **k)

    def offsets_for_times(self, tps: list[Any], *a: Any, **k: Any) -> Any:
        ours = bool(tps) and tps[0].topic == self._topic
        if ours and self._when == "between":
            self._inject()
        got = self._consumer.offsets_for_times(tps, *a, **k)
        if ours:
            self._answers.extend(tp.offset for tp in got)
            if self._when == "after":
                self._inject()
        return got


@pytest.fixture
def seek_spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str, str, Inject], list[int]]]:
    """``arm(topic, when, inject)``: the next seek by time on ``topic`` writes what ``inject`` writes.
    Returns the offsets ``offsets_for_times`` answered (-1: nothing at or after the time)."""
    real = reader._offsets_for_time
    armed: list[tuple[str, str, Inject, list[int]]] = []

    def spied(consumer: Any, topic: str, parts: list[int], since_ms: int, timeout: float) -> dict[int, int]:
        for i, (t, when, inject, answers) in enumerate(armed):
            if t == topic:
                del armed[i]
                return real(SeekSpy(consumer, topic, when, inject, answers), topic, parts, since_ms, timeout)
        return real(consumer, topic, parts, since_ms, timeout)

    monkeypatch.setattr(reader, "_offsets_for_time", spied)

    def arm(topic: str, when: str, inject: Inject) -> list[int]:
        answers: list[int] = []
        armed.append((topic, when, inject, answers))
        return answers

    yield arm
    assert not armed, "the armed seek never happened"


@pytest.fixture
def run(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.delenv("FLEET2BAN_CONFIG", raising=False)
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        res = runner.invoke(
            app, ["-b", cluster.bootstrap, "--topic-prefix", cluster.settings.topic_prefix, *args]
        )
        assert res.exit_code == 0, (res.exit_code, res.output, res.exception)
        return msgspec.json.decode(res.stdout)

    return invoke


@pytest.mark.parametrize("when", ["between", "after"])
def test_bans_add_wait_sees_a_mirror_written_during_its_seek(
    cluster: Cluster, run: Callable[..., Any], seek_spy: Callable[[str, str, Inject], list[int]], when: str
) -> None:
    """The processor's mirror lands while ``--wait`` seeks ``bans``: the command still sees it."""
    ip = "203.0.113.77"
    w = Writer(cluster)
    # an earlier ban of the same address, long ago: in the partition, but before the seek's time
    old = ban(ip, utcnow() - timedelta(days=2), origin="manual", by="dave")
    w.ban_state(old)
    w.flush()

    def mirror() -> None:
        """What the processor does with the manual decision the command has just written."""
        (d,) = [
            decode_decision(r.value)
            for r in read_to_end(cluster, cluster.topics.decisions, timeout=10)
            if r.value is not None
        ]
        w.producer.produce(
            cluster.topics.bans, key=ban_key(d.jail, d.ip).encode(), value=encode(BanState.from_decision(d))
        )
        w.flush()

    answers = seek_spy(cluster.topics.bans, when, mirror)
    out = run("bans", "add", ip, "--for", "1h", "--reason", "race", "--by", "dave", "--wait", "20", "--json")
    assert out["mirrored"] is True and out["decision"]["ip"] == ip
    if when == "after":
        # the mirror came after Kafka answered "nothing at or after this time" for every partition:
        # only the ends asked before the question let the reader see it
        assert answers and set(answers) == {-1}, answers


@pytest.mark.parametrize("when", ["between", "after"])
def test_bans_history_since_is_exact_with_a_decision_written_during_its_seek(
    cluster: Cluster, run: Callable[..., Any], seek_spy: Callable[[str, str, Inject], list[int]], when: str
) -> None:
    now = utcnow().replace(microsecond=0)
    since, until = now - timedelta(minutes=10), now + timedelta(minutes=10)
    w = Writer(cluster)
    # record time long ago: before the seek's time (since - 5 min slack) in every partition
    for i in range(30):
        w.decision(ban(f"10.9.0.{i}", now - timedelta(days=1, seconds=i)))
    # around the boundaries, written with record times inside the slack: read, then filtered on `at`
    edge = {
        "just-before": ban("10.9.1.1", since - timedelta(seconds=1), did="just-before"),
        "at-since": ban("10.9.1.2", since, did="at-since"),
        "inside": ban("10.9.1.3", now - timedelta(minutes=1), did="inside"),
        "at-until": ban("10.9.1.4", until, did="at-until"),
        "just-after": ban("10.9.1.5", until + timedelta(seconds=1), did="just-after"),
    }
    late = ban("10.9.2.1", now - timedelta(seconds=5), did="written-during-the-seek")
    answers: list[int] = []

    def write_late() -> None:
        w.producer.produce(cluster.topics.decisions, key=late.ip.encode(), value=encode(late))
        w.flush()

    def history() -> set[str]:
        got = run("bans", "history", "--since", _iso(since), "--until", _iso(until), "--json")
        return {d["id"] for d in got}

    w.flush()
    # first the partitions hold old records only: the late decision comes in the seek itself
    answers = seek_spy(cluster.topics.decisions, when, write_late)
    assert history() == {"written-during-the-seek"}
    if when == "after":
        assert answers and set(answers) == {-1}, answers
    for d in edge.values():
        w.decision(d, ts=utcnow())
    w.flush()
    assert history() == {"at-since", "inside", "at-until", "written-during-the-seek"}


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")
