"""The wire contract: round trips, strict rejections, keys and ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest

from fleet2ban import contract as c

TS = datetime(2017, 12, 8, 0, 55, 49, 939559, tzinfo=UTC)


def _batch() -> c.EventBatch:
    lines = [
        c.Line(
            id=c.line_id("h1", "8-12", off),
            ts=TS,
            port=51234,
            client="x](1.2.3.4:1)",
            reason="auth",
            raw="raw line",
        )
        for off in (0, 97)
    ]
    return c.EventBatch(host="h1", ip="10.1.2.3", lines=lines, instance="amps")


def test_event_batch_round_trip() -> None:
    batch = _batch()
    back = c.decode_batch(c.encode(batch))
    assert back == batch
    events = back.events()
    assert [e.id for e in events] == ["h1:8-12:0", "h1:8-12:97"]
    assert events[0].host == "h1" and events[0].ip == "10.1.2.3" and events[0].ts == TS


def test_times_are_rfc3339_utc_on_the_wire() -> None:
    data = msgspec.json.decode(c.encode(_batch()))
    assert data["v"] == c.SCHEMA_VERSION
    assert data["lines"][0]["ts"] == "2017-12-08T00:55:49.939559Z"
    assert c.rfc3339(TS) == "2017-12-08T00:55:49.939559Z"


def test_offset_times_decode_to_the_same_instant() -> None:
    raw = c.encode(_batch()).replace(b"2017-12-08T00:55:49.939559Z", b"2017-12-07T16:55:49.939559-08:00")
    back = c.decode_batch(raw)
    assert back.lines[0].ts == TS
    assert back.lines[0].ts.utcoffset() == timedelta(0) or back.lines[0].ts.tzinfo == timezone(
        timedelta(hours=-8)
    )


def test_decision_and_ban_state_round_trip() -> None:
    d = c.Decision(
        id=c.auto_decision_id("amps", "10.1.2.3", "h1:1:0"),
        action="ban",
        ip="10.1.2.3",
        jail="amps",
        at=TS,
        ports=[9007],
        expires_at=TS + timedelta(seconds=120),
        failures=20,
        first_failure_at=TS,
        hosts=["h1", "h2"],
        ban_count=1,
        evidence=["l1"],
    )
    assert c.decode_decision(c.encode(d)) == d
    b = c.BanState.from_decision(d)
    assert c.decode_ban(c.encode(b)) == b
    assert b.active_at(TS) and not b.active_at(TS + timedelta(seconds=121))


def test_reports_topic_carries_a_tagged_union() -> None:
    r = c.Report(host="h1", kind="applied", jail="amps", ip="10.1.2.3", at=TS, decision_id="b-1")
    hb = c.Heartbeat(host="h1", role="enforcer", at=TS, counters={"applied": 3.0}, applied=["amps|10.1.2.3"])
    assert c.decode_report(c.encode(r)) == r
    assert c.decode_report(c.encode(hb)) == hb
    assert b'"type":"heartbeat"' in c.encode(hb)


def test_unknown_fields_are_ignored() -> None:
    data = msgspec.json.decode(c.encode(_batch()))
    data["added_by_a_newer_writer"] = {"x": 1}
    data["lines"][0]["also_new"] = 5
    assert c.decode_batch(msgspec.json.encode(data)) == _batch()


@pytest.mark.parametrize(
    "payload",
    [
        None,
        b"",
        b"not json",
        b"[]",
        b'{"v":1}',
        b'{"v":1,"host":"h","ip":"10.1.2.3","lines":[]}',
        b'{"v":1,"host":"h","ip":"not-an-ip","lines":[{"id":"a","ts":"2017-12-08T00:55:49Z","port":1,"client":"c","reason":"auth"}]}',
        b'{"v":1,"host":"h","ip":"10.1.2.3","lines":[{"id":"a","ts":"yesterday","port":1,"client":"c","reason":"auth"}]}',
        b'{"v":1,"host":"h","ip":"10.1.2.3","lines":[{"id":"a","ts":"2017-12-08T00:55:49Z","port":"x","client":"c","reason":"auth"}]}',
        b'{"v":99,"host":"h","ip":"10.1.2.3","lines":[{"id":"a","ts":"2017-12-08T00:55:49Z","port":1,"client":"c","reason":"auth"}]}',
        b'{"v":1,"host":"h","ip":"10.1.2.3","lines":[{"id":"a","ts":"2017-12-08T00:55:49","port":1,"client":"c","reason":"auth"}]}',
        b"\xff\xfe garbage",
    ],
)
def test_invalid_batches_raise_one_error_type(payload: bytes | None) -> None:
    with pytest.raises(c.ContractError):
        c.decode_batch(payload)


def test_invalid_decisions_and_bans_are_rejected() -> None:
    with pytest.raises(c.ContractError):
        c.decode_decision(
            b'{"v":1,"id":"x","action":"maybe","ip":"10.1.2.3","jail":"a","at":"2017-12-08T00:55:49Z"}'
        )
    with pytest.raises(c.ContractError):
        c.decode_ban(b'{"v":1,"decision_id":"x","ip":"999.1.1.1","jail":"a","at":"2017-12-08T00:55:49Z"}')
    with pytest.raises(c.ContractError):
        c.decode_report(b'{"type":"nope","host":"h"}')


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("10.1.2.3", "10.1.2.3"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("[2001:DB8::7]", "2001:db8::7"),
        ("2001:0db8:0000::0001", "2001:db8::1"),
    ],
)
def test_normalize_ip(text: str, want: str) -> None:
    assert c.normalize_ip(text) == want


def test_normalize_target_and_keys() -> None:
    assert c.normalize_target("2001:db8::1:2/64") == "2001:db8::/64"
    assert c.normalize_target("10.1.2.3/32") == "10.1.2.3"
    assert c.ban_key("amps", "10.1.2.3") == "amps|10.1.2.3"
    assert c.split_ban_key(b"amps|2001:db8::/64") == ("amps", "2001:db8::/64")
    with pytest.raises(c.ContractError):
        c.split_ban_key("no-separator")
    with pytest.raises(c.ContractError):
        c.normalize_target("10.0.0.0/99")


def test_decision_ids_are_deterministic_and_distinct() -> None:
    a = c.auto_decision_id("amps", "10.1.2.3", "h1:1:0")
    assert a == c.auto_decision_id("amps", "10.1.2.3", "h1:1:0")
    assert a != c.auto_decision_id("amps", "10.1.2.3", "h1:1:97")
    assert a != c.auto_decision_id("amps", "10.1.2.3", "h1:1:0", "unban")
    assert a != c.auto_decision_id("other", "10.1.2.3", "h1:1:0")


def test_topics_share_the_prefix() -> None:
    t = c.Topics("acme.")
    assert (t.events, t.decisions, t.bans, t.reports) == (
        "acme.events",
        "acme.decisions",
        "acme.bans",
        "acme.reports",
    )
    specs = {s.name: s for s in t.specs(partitions=6, decisions_retention_days=2)}
    assert specs["acme.bans"].config["cleanup.policy"] == "compact"
    assert specs["acme.decisions"].config["retention.ms"] == str(2 * 24 * 3600 * 1000)
    assert specs["acme.events"].partitions == 6


def test_events_key_places_an_ipv6_address_by_its_prefix_and_ipv4_by_itself() -> None:
    from fleet2ban.contract import events_key, events_partition

    assert events_key("2001:db8:0:7::1", 64) == "2001:db8:0:7::/64"
    assert events_key("2001:db8:0:7::/64", 64) == "2001:db8:0:7::/64"  # a jail's /64 target: the same key
    assert events_key("2001:db8:0:7::/80", 64) == "2001:db8:0:7::/64"
    assert events_key("2001:db8:0:7::1", 128) == "2001:db8:0:7::1"  # by address, as before the setting
    assert events_key("192.0.2.7", 64) == "192.0.2.7"
    assert {events_partition(f"2001:db8:0:7::{n:x}", 12, 64) for n in range(1, 200)} == {
        events_partition("2001:db8:0:7::/64", 12, 64)
    }
