"""The notifier's pure parts: filters, digests within the interval, backoff, commits, de-duplication,
and message bodies that never carry attacker text or terminal escapes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from fleet2ban.contract import Decision
from fleet2ban.notify import render
from fleet2ban.notify.outbox import Commits, Item, Outbox, Seen, wants
from fleet2ban.settings import DestinationSettings

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def dec(i: int, action: str = "ban", jail: str = "amps", origin: str = "auto", **kw: object) -> Decision:
    return Decision(
        id=f"d{i}",
        action=action,  # type: ignore[arg-type]
        ip=f"203.0.113.{i % 250 + 1}",
        jail=jail,
        at=T0,
        expires_at=T0 + timedelta(minutes=2) if action == "ban" else None,
        failures=20,
        hosts=["h1", "h2"],
        origin=origin,  # type: ignore[arg-type]
        evidence=["07-0013 client[\x1b]0;pwned\x07<!channel>](203.0.113.1:1) disconnected: auth."],
        **kw,  # type: ignore[arg-type]
    )


def dest(**kw: object) -> DestinationSettings:
    return DestinationSettings(name="hook", url="http://127.0.0.1:9/x", **kw)  # type: ignore[arg-type]


def test_filters_by_jail_action_and_origin() -> None:
    d = dest(jails=["amps"], actions=["ban"], origins=["manual"])
    assert wants(d, dec(1, origin="manual", by="ops", reason="r"))
    assert not wants(d, dec(1))
    assert not wants(d, dec(1, action="unban", origin="manual"))
    assert not wants(d, dec(1, jail="ssh", origin="manual"))
    assert wants(dest(), dec(1, action="unban", jail="ssh"))


def test_a_flood_becomes_one_message_per_interval() -> None:
    box = Outbox(dest(digest_interval_s=10))
    box.offer(Item(dec(0), (0, 0)))
    first = box.take(100.0)
    assert [i.decision.id for i in first] == ["d0"], "the first decision leaves at once"
    box.sent(first, 100.0)
    for i in range(1, 1001):
        box.offer(Item(dec(i), (0, i)))
    assert box.take(105.0) == [], "within the interval nothing leaves"
    digest = box.take(110.0)
    assert len(digest) == 1000
    box.sent(digest, 110.0)
    assert box.take(200.0) == [] and box.due_at() is None


def test_zero_interval_sends_each_decision_alone() -> None:
    box = Outbox(dest(digest_interval_s=0))
    for i in range(3):
        box.offer(Item(dec(i), (0, i)))
    sent = []
    while (batch := box.take(1.0)) != []:
        assert len(batch) == 1
        box.sent(batch, 1.0)
        sent += batch
    assert [i.decision.id for i in sent] == ["d0", "d1", "d2"]


def test_failures_back_off_exponentially_up_to_the_bound() -> None:
    box = Outbox(dest(), retry_initial_s=0.5, retry_max_s=4.0)
    box.offer(Item(dec(0), (0, 0)))
    delays = [box.failed(0.0) for _ in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert box.take(3.9) == [] and box.take(4.0) != []
    box.sent(box.take(4.0), 4.0)
    assert box.failures == 0


def test_max_pending_drops_the_oldest() -> None:
    box = Outbox(dest(max_pending=3))
    gone = [g for i in range(5) for g in box.offer(Item(dec(i), (0, i)))]
    assert [g.decision.id for g in gone] == ["d0", "d1"] and box.dropped == 2
    assert [i.decision.id for i in box.queue] == ["d2", "d3", "d4"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 3)), min_size=1, max_size=40), st.randoms())
def test_commits_never_pass_a_record_some_destination_still_owes(
    records: list[tuple[int, int]], rnd: object
) -> None:
    commits = Commits()
    owed: dict[tuple[int, int], int] = {}
    next_off = {0: 0, 1: 0, 2: 0}
    for p, n in records:
        pos = (p, next_off[p])
        next_off[p] += 1
        commits.add(pos, n)
        if n:
            owed[pos] = n
    todo = [pos for pos, n in owed.items() for _ in range(n)]
    rnd.shuffle(todo)  # type: ignore[attr-defined]
    for pos in todo:
        c = commits.committable()
        for p, off in c.items():
            assert all(o >= off for (pp, o) in owed if pp == p), "a committed offset passed an owed record"
        commits.done(pos)
        owed[pos] -= 1
        if owed[pos] == 0:
            del owed[pos]
    assert commits.committable() == {p: n for p, n in next_off.items() if n}


def test_seen_keeps_a_bounded_window_of_ids() -> None:
    s = Seen(size=2)
    assert s.first_time("a") and s.first_time("b") and not s.first_time("a")
    assert s.first_time("c")  # b is the oldest now and goes
    assert s.first_time("b") and not s.first_time("c")


def test_bodies_name_the_decision_never_the_evidence_and_stay_inert() -> None:
    d = dec(1, origin="manual", by="ops\x1b[2J", reason="<!channel> & \u202eevil")
    hook = json.loads(render.webhook_json([d], 0))
    assert hook["count"] == 1 and hook["decisions"][0]["id"] == "d1"
    slack = json.loads(render.slack_json([d], 0))["text"]
    assert "<!channel>" not in slack and "&lt;!channel&gt; &amp;" in slack
    assert "\x1b" not in slack and "\u202e" not in slack
    assert "pwned" not in slack and "07-0013" not in slack
    digest = json.loads(render.slack_json([dec(i) for i in range(3)], 7))["text"]
    assert "10 decisions" in digest and "and 7 more" in digest
    mail = render.email([dec(2)], 0, "f2b@example.org", ["ops@example.org"])
    assert "ban 203.0.113.3 in jail amps for 2m (20 failures on h1, h2)" in mail["Subject"]
    assert "pwned" not in mail.get_content()
