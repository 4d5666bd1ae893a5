"""The console's pure parts: the bans page query (filter, sort, paginate, coverage), charts, security."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from console_helpers import decision, heartbeat, report

from fleet2ban.audit.view import FleetView
from fleet2ban.console import pages
from fleet2ban.console.charts import bucket_size, stacked_bars
from fleet2ban.console.exceptions import BadQueryError, TokenError
from fleet2ban.console.security import (
    Secrets,
    is_loopback,
    is_open_path,
    load_token,
    parse_bind,
    require_token_for,
    safe_next,
    same_origin,
)
from fleet2ban.contract import BanState, Event, ban_key

NOW = datetime(2026, 11, 25, 9, 0, 0, tzinfo=UTC)


def fleet(n: int = 250) -> FleetView:
    """``n`` bans (one manual, one in jail ssh, one expired), three enforcers: enf-c misses the odd ones."""
    view = FleetView()
    keys: list[str] = []
    for i in range(n):
        d = decision(
            f"10.0.{i // 250}.{i % 250 + 1}",
            at=NOW - timedelta(seconds=n - i),
            jail="ssh" if i == 7 else "amps",
            origin="manual" if i == 3 else "auto",
            by="bob" if i == 3 else None,
            failures=i,
            secs=None if i == 5 else 3600,
        )
        view.add_ban(ban_key(d.jail, d.ip), BanState.from_decision(d), d.at)
        keys.append(ban_key(d.jail, d.ip))
    gone = decision("192.0.2.1", at=NOW - timedelta(hours=2), secs=60)
    view.add_ban(ban_key("amps", gone.ip), BanState.from_decision(gone), gone.at)
    view.add_report(heartbeat("enf-a", keys=keys, at=NOW))
    view.add_report(heartbeat("enf-b", keys=keys, at=NOW))
    view.add_report(heartbeat("enf-c", keys=keys[::2], at=NOW))
    view.add_report(heartbeat("enf-dead", keys=[], at=NOW - timedelta(hours=1)))
    failed = decision("10.0.0.2", at=NOW - timedelta(seconds=n - 1), failures=1)
    view.add_report(report("enf-c", failed, "failed", "ipset: set is full"))
    return view


def q(**params: str) -> pages.BanQuery:
    return pages.BanQuery.from_params(params)


def test_first_page_newest_first_with_coverage_of_shown_rows() -> None:
    p = pages.ban_page(fleet(), NOW, q())
    assert (p.total, p.in_force, p.pages, len(p.rows)) == (250, 250, 3, 100)  # the expired one is gone
    assert p.live_enforcers == ["enf-a", "enf-b", "enf-c"]  # enf-dead is silent
    assert p.rows[0].ban.ip == "10.0.0.250" and p.rows[0].coverage_text == "2/3 hosts"
    assert p.rows[0].coverage.missing == ["enf-c"]
    assert p.rows[1].coverage_text == "3/3 hosts"
    assert p.incomplete == 125
    assert p.jails == ["amps", "ssh"]


def test_filter_sort_and_pages() -> None:
    view = fleet()
    last = pages.ban_page(view, NOW, q(page="3"))
    assert len(last.rows) == 50 and last.rows[-1].ban.ip == "10.0.0.1"
    beyond = pages.ban_page(view, NOW, q(page="99"))
    assert beyond.page == 3
    assert [r.ban.ip for r in pages.ban_page(view, NOW, q(jail="ssh")).rows] == ["10.0.0.8"]
    manual = pages.ban_page(view, NOW, q(origin="manual")).rows
    assert [(r.ban.ip, r.ban.by) for r in manual] == [("10.0.0.4", "bob")]
    net = pages.ban_page(view, NOW, q(ip="10.0.0.0/29"))
    assert net.total == 7  # .1 to .7
    by_ip = pages.ban_page(view, NOW, q(sort="ip", order="asc", per_page="3"))
    assert [r.ban.ip for r in by_ip.rows] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]  # numeric, not text
    by_fail = pages.ban_page(view, NOW, q(sort="failures"))
    assert by_fail.rows[0].ban.failures == 249
    until = pages.ban_page(view, NOW, q(sort="until"))
    assert until.rows[0].ban.expires_at is None  # permanent sorts last ascending, first descending
    incomplete = pages.ban_page(view, NOW, q(coverage="incomplete", sort="coverage", order="asc"))
    assert incomplete.total == 125 and all(not r.coverage.complete for r in incomplete.rows)
    second = incomplete.rows[0]
    assert "enf-c (failed: ipset: set is full)" in second.missing_text or second.missing_text == ["enf-c"]


def test_query_round_trip_and_errors() -> None:
    query = q(jail="amps", origin="auto", ip="10.0.0.0/24", coverage="incomplete", sort="ip", order="asc")
    assert pages.BanQuery.from_params(query.params()) == query
    assert query.link(page=2).startswith("?jail=amps&origin=auto&ip=10.0.0.0%2F24")
    assert q().link() == "?"
    assert q(sort="ip").sort_link("ip") == "?sort=ip&order=asc"  # toggles
    for bad in ({"origin": "x"}, {"sort": "evil"}, {"order": "up"}, {"page": "x"}, {"ip": "not-an-ip"}):
        with pytest.raises(BadQueryError):
            pages.BanQuery.from_params(bad)


def test_fleet_page_silent_first() -> None:
    f = pages.fleet_page(fleet(), NOW)
    assert f.components[0].host == "enf-dead" and f.components[0].silent
    assert f.silent == 1 and f.by_role == {"enforcer": 4}


def test_ip_page_chart_per_host_and_markers() -> None:
    d = decision("203.0.113.9", at=NOW - timedelta(seconds=30))
    events = [
        Event(
            host=h,
            ip="203.0.113.9",
            id=f"{h}{i}",
            ts=NOW - timedelta(seconds=40 - i),
            port=1,
            client="<b>x</b>",
            reason="auth",
        )
        for i, h in enumerate(["amps1"] * 15 + ["amps2"] * 5)
    ]
    p = pages.ip_page("203.0.113.9", [d], [], [BanState.from_decision(d)], events, NOW, timedelta(hours=6))
    assert p.failures_by_host == {"amps1": 15, "amps2": 5} and p.events == 20
    assert p.chart is not None and p.chart.total == 20 and len(p.chart.markers) == 1
    assert p.window_start >= NOW - timedelta(seconds=80)  # zoomed on the data, not 6 hours
    assert p.history.in_force and p.recent_lines[0].ts == max(e.ts for e in events)


def test_history_page_counts_and_chart() -> None:
    ds = [decision(f"192.0.2.{i}", at=NOW - timedelta(minutes=i)) for i in range(1, 11)]
    ds.append(decision("192.0.2.1", action="unban", at=NOW))
    ds.append(decision("192.0.2.99", at=NOW - timedelta(hours=5)))
    ds.append(decision("198.51.100.0/24", action="allow", jail="*", at=NOW - timedelta(seconds=5)))
    h = pages.history_page(ds, NOW - timedelta(hours=1), NOW)
    assert (h.total, h.bans, h.unbans) == (12, 10, 1)  # an allow-list change is listed, neither ban nor unban
    assert h.decisions[0].action == "unban"  # newest first
    assert h.chart.bucket_s == 60 and h.chart.total == 10 and len(h.chart.rects) == 10


def test_stacked_bars_geometry() -> None:
    t0 = NOW - timedelta(minutes=10)
    pts = [(t0 + timedelta(seconds=s), "a") for s in range(0, 600, 10)] + [(t0, "b")] * 3
    c = stacked_bars(pts, t0, NOW, max_buckets=60)
    assert c.bucket_s == 10 and c.total == 63
    assert {s.name: s.total for s in c.series} == {"a": 60, "b": 3}
    assert all(c.top - 0.01 <= r.y and r.y + r.h <= c.bottom + 0.01 for r in c.rects)
    assert c.y_ticks[-1].label == "4"  # the first bucket: one "a" and three "b"
    assert min(r.y for r in c.rects) == pytest.approx(c.top)
    assert c.x_ticks[0].label == t0.strftime("%H:%M")


def test_many_series_are_merged_into_other() -> None:
    pts = [(NOW, f"host{i}") for i in range(12) for _ in range(i + 1)]
    c = stacked_bars(pts, NOW - timedelta(minutes=1), NOW + timedelta(seconds=1))
    assert len(c.series) == 8 and c.series[-1].name == "other"
    assert sum(s.total for s in c.series) == c.total == sum(range(1, 13))


def test_bucket_size() -> None:
    assert bucket_size(60, 120, 1) == 1
    assert bucket_size(3600, 240, 60) == 60
    assert bucket_size(86400, 240, 60) == 600
    assert bucket_size(40 * 86400, 10, 1) == 4 * 86400


def test_bind_and_token_rules(tmp_path: Path) -> None:
    assert parse_bind("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_bind("[::1]:9000") == ("::1", 9000)
    assert parse_bind(":9000") == ("127.0.0.1", 9000)
    assert parse_bind("0.0.0.0") == ("0.0.0.0", 8080)
    with pytest.raises(TokenError):
        parse_bind("host:port")
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    require_token_for("127.0.0.1", None, tls=False)
    with pytest.raises(TokenError, match="needs a token"):
        require_token_for("0.0.0.0", None)
    with pytest.raises(TokenError, match="needs TLS"):
        require_token_for("0.0.0.0", "0123456789abcdef-long", tls=False)
    short = tmp_path / "short"
    short.write_text("abc\n")
    with pytest.raises(TokenError, match="too short"):
        load_token(short)
    with pytest.raises(TokenError, match="cannot read"):
        load_token(tmp_path / "missing")
    good = tmp_path / "token"
    good.write_text("  0123456789abcdef-long  \n")
    assert load_token(good) == "0123456789abcdef-long"


def test_sessions_csrf_and_redirects() -> None:
    s = Secrets("0123456789abcdef-long")
    assert s.required and s.check_token("0123456789abcdef-long") and not s.check_token("nope")
    session = s.new_session()
    assert s.check_session(session) and not s.check_session("0123456789abcdef-long")
    assert s.check_bearer("Bearer 0123456789abcdef-long") and not s.check_bearer("Basic x")
    assert s.new_session() != session  # one per login
    assert s.check_csrf(s.csrf_token(session), session) and not s.check_csrf(None)
    assert not s.check_csrf(s.csrf_token(session), s.new_session())  # bound to its session
    other = s.new_session()
    assert s.csrf_token(session) != s.csrf_token(other)  # one token per session, drawn at random
    assert s.csrf_token("no-such-session") == "" and not s.check_csrf("", "no-such-session")
    s.end_session(session)
    assert not s.check_session(session)
    assert not s.check_csrf(s.csrf_token(other), session)  # an ended session's forms are refused
    # a server restart draws new tokens: the same cookie value is worth nothing on another server
    assert Secrets(None).csrf_token(other) == ""
    assert not Secrets(None).required and Secrets(None).check_token(None)
    assert same_origin("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert not same_origin("null", "127.0.0.1:8080") and not same_origin("http://evil", "127.0.0.1:8080")
    assert safe_next("/bans?jail=x") == "/bans?jail=x"
    for bad in ("//evil.example/", "https://evil.example/", "javascript:alert(1)", "/\\evil", None):
        assert safe_next(bad) == "/bans"
    assert is_open_path("/static/console.css") and is_open_path("/login") and is_open_path("/healthz")
    assert not is_open_path("/stream") and not is_open_path("/loginx") and not is_open_path("/metrics")
