"""The console in real headless Chromium, against the local Kafka cluster: what a person sees.

Each test writes real contract records (bans, decisions, reports, events) under a fresh topic prefix,
starts a console (follower + uvicorn in threads) and drives one shared browser. Screenshots of each page
go to the artefacts directory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from console_helpers import HOSTILE, Writer, decision, failures, heartbeat, report, wait_for
from selenium.webdriver.common.by import By

from fleet2ban.audit.reader import read_decisions
from fleet2ban.console.live import LiveFleet
from fleet2ban.console.server import ServerThread, running
from fleet2ban.contract import ban_key, utcnow
from fleet2ban.kafka import Cluster, ensure_topics, resolve
from fleet2ban.kafka.local import LocalKafka, free_port
from fleet2ban.settings import KafkaSettings, Settings

pytestmark = pytest.mark.kafka

Console = tuple[ServerThread, LiveFleet]
Start = Callable[..., Console]


@pytest.fixture
def start_console(kafka_settings: KafkaSettings) -> Iterator[Start]:
    """Start a console on the test's topics (stopped after the test); waits until it caught up."""
    stack = contextlib.ExitStack()

    def start(
        *, host: str = "127.0.0.1", token: str | None = None, allow_write: bool = False,
        kafka: KafkaSettings | None = None, wait: bool = True,
    ) -> Console:  # fmt: skip
        srv, live = stack.enter_context(
            running(Settings(), kafka or kafka_settings, host=host, port=free_port(), token=token,
                    allow_write=allow_write)
        )  # fmt: skip
        if wait:
            assert live.wait_until(lambda s: s.caught_up, 20), live.status
        return srv, live

    with stack:
        yield start


@pytest.fixture
def writer(cluster: Cluster) -> Writer:
    return Writer(cluster)


def shot(browser: Any, artefacts: Path, name: str) -> Path:
    path = artefacts / f"{name}.png"
    browser.save_screenshot(str(path))
    return path


def row(browser: Any, ip: str) -> Any:
    rows = browser.find_elements(By.CSS_SELECTOR, f'tr.ban[data-key="amps|{ip}"]')
    return rows[0] if rows else None


def three_enforcers(writer: Writer, applied: dict[str, list[str]]) -> None:
    for host in ("enf-a", "enf-b", "enf-c"):
        writer.report(heartbeat(host, keys=applied.get(host, [])))


# ------------------------------------------------------------------------------------- bans page


def test_bans_page_shows_coverage_and_names_the_missing_host(
    browser: Any, artefacts: Path, writer: Writer, start_console: Start
) -> None:
    partial = writer.ban(decision("203.0.113.7", failures=31, hosts=["amps1", "amps2"]))
    full = writer.ban(decision("198.51.100.9", origin="manual", by="alice", reason="scanner", secs=None))
    k1, k2 = ban_key("amps", partial.ip), ban_key("amps", full.ip)
    three_enforcers(writer, {"enf-a": [k1, k2], "enf-b": [k1, k2], "enf-c": [k2]})
    writer.report(report("enf-c", partial, "failed", "ipset: set is full"))
    writer.flush()
    srv, _ = start_console()

    browser.get(srv.url + "/bans")
    r = wait_for("the partial ban's row", lambda: row(browser, partial.ip))
    assert r.find_element(By.CSS_SELECTOR, "td.coverage").text == "2/3 hosts"
    assert "enf-c" in r.find_element(By.CSS_SELECTOR, "td.missing").text
    assert "ipset: set is full" in r.find_element(By.CSS_SELECTOR, "td.missing").text
    assert r.find_element(By.CSS_SELECTOR, "td.failures").text == "31"
    assert r.find_element(By.CSS_SELECTOR, "td.until").text.startswith("in ")  # a live countdown
    f = row(browser, full.ip)
    assert f.find_element(By.CSS_SELECTOR, "td.coverage").text == "3/3 hosts"
    assert f.find_element(By.CSS_SELECTOR, "td.until").text == "permanent"
    assert f.find_element(By.CSS_SELECTOR, "td.origin").text == "manual (alice)"
    assert "1 not applied everywhere" in browser.find_element(By.CSS_SELECTOR, "p.summary").text
    assert not browser.find_element(By.ID, "broker-banner").is_displayed()
    shot(browser, artefacts, "bans")

    # filter: only the bans not applied everywhere; sort by IP ascending
    browser.get(srv.url + "/bans?coverage=incomplete")
    wait_for("the filtered list", lambda: row(browser, partial.ip))
    assert row(browser, full.ip) is None
    browser.get(srv.url + "/bans?sort=ip&order=asc")
    ips = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "tr.ban td.ip")]
    assert ips == ["198.51.100.9", "203.0.113.7"]


def test_a_new_ban_appears_without_a_reload(
    browser: Any, artefacts: Path, writer: Writer, start_console: Start
) -> None:
    writer.ban(decision("192.0.2.1"))
    short = writer.ban(decision("192.0.2.2", secs=3))
    writer.report(heartbeat("enf-a", keys=[ban_key("amps", "192.0.2.1")]))
    writer.flush()
    srv, _ = start_console()
    browser.get(srv.url + "/bans")
    wait_for("the first ban", lambda: row(browser, "192.0.2.1"))
    browser.execute_script("window.__sameDocument = 42;")
    wait_for("the live stream to open", lambda: browser.find_element(By.ID, "live-state").text == "live")
    # the countdown runs out: the expired ban leaves the list without a reload
    assert row(browser, short.ip) is not None
    wait_for("the expired ban to leave the list", lambda: row(browser, short.ip) is None, timeout=10)
    assert browser.execute_script("return window.__sameDocument;") == 42

    fresh = writer.ban(decision("192.0.2.77", failures=44))
    writer.flush()
    r = wait_for("the new ban's row, pushed live", lambda: row(browser, fresh.ip), timeout=10)
    assert r.find_element(By.CSS_SELECTOR, "td.coverage").text == "0/1 hosts"
    assert browser.execute_script("return window.__sameDocument;") == 42  # no reload happened

    # the enforcer applies it: coverage updates live too
    writer.report(heartbeat("enf-a", keys=[ban_key("amps", "192.0.2.1"), ban_key("amps", fresh.ip)]))
    writer.flush()
    wait_for(
        "coverage 1/1 after the enforcer's heartbeat",
        lambda: row(browser, fresh.ip).find_element(By.CSS_SELECTOR, "td.coverage").text == "1/1 hosts",
    )
    assert browser.execute_script("return window.__sameDocument;") == 42

    # a decision the processor has not mirrored yet shows in the latest decisions, live too
    pending = writer.decision(decision("192.0.2.88", did="b-pending-88"))
    writer.flush()
    wait_for(
        "the unmirrored decision in the latest decisions",
        lambda: browser.find_elements(By.CSS_SELECTOR, f'table.recent tr[data-id="{pending.id}"]'),
    )
    assert row(browser, pending.ip) is None  # not a ban in force until bans says so
    assert browser.execute_script("return window.__sameDocument;") == 42
    shot(browser, artefacts, "bans-live")


# ------------------------------------------------------------------------------------ IP page


def test_ip_page_shows_evidence_and_hostile_names_as_text(
    browser: Any, artefacts: Path, writer: Writer, start_console: Start
) -> None:
    ip = "203.0.113.66"
    evidence = (
        f"2026-11-25T08:00:00.0000000Z [26] info: 07-0013 client[{HOSTILE}]({ip}:1) disconnected: auth."
    )
    d = writer.ban(decision(ip, evidence=[evidence], hosts=["amps1", "amps2"], failures=25))
    writer.report(heartbeat("enf-a", keys=[ban_key("amps", ip)]))
    writer.report(report("enf-a", d))
    writer.events(failures("amps1", ip, ["good-client", HOSTILE, "x](198.51.100.1:1) disconnected: auth."]))
    writer.events(failures("amps2", ip, ["other"]))
    # a manual ban whose operator name and reason are hostile too (shown on the bans page)
    writer.ban(decision("198.51.100.200", origin="manual", by=HOSTILE, reason=HOSTILE))
    writer.flush()
    srv, _ = start_console()

    browser.get(srv.url + f"/ip/{ip}")
    wait_for("the IP page", lambda: browser.find_element(By.TAG_NAME, "h1").text == ip)
    assert "Banned in jail amps" in browser.find_element(By.CSS_SELECTOR, "section.in-force").text
    ev = browser.find_element(By.CSS_SELECTOR, "ul.evidence li code")
    assert ev.text == evidence  # the hostile name, as text
    assert ev.find_elements(By.CSS_SELECTOR, "*") == []  # no element was injected
    clients = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "td.client code")]
    assert HOSTILE in clients
    assert "applied" in browser.find_element(By.CSS_SELECTOR, "table.timeline").text
    # the failures chart: bars for both hosts, and the ban marked
    assert browser.find_elements(By.CSS_SELECTOR, "figure.chart svg rect.bar")
    legend = browser.find_element(By.CSS_SELECTOR, "figure.chart figcaption").text
    assert "amps1 (3)" in legend and "amps2 (1)" in legend
    assert browser.find_elements(By.CSS_SELECTOR, "figure.chart svg line.mark-ban")
    assert browser.execute_script("return window.__pwned === undefined;")
    shot(browser, artefacts, "ip")

    browser.get(srv.url + "/bans")
    r = wait_for("the manual ban's row", lambda: row(browser, "198.51.100.200"))
    assert r.find_element(By.CSS_SELECTOR, "td.origin").text == f"manual ({HOSTILE})"
    assert browser.execute_script("return window.__pwned === undefined;")
    assert not browser.find_elements(By.CSS_SELECTOR, "main img, main script")
    # nothing the page did was refused by the CSP (no inline script or style is needed)
    errors = [e for e in browser.get_log("browser") if "Content Security Policy" in e.get("message", "")]
    assert errors == []


# ------------------------------------------------------------------------------ fleet, history


def test_fleet_page_marks_silent_components_red(
    browser: Any, artefacts: Path, writer: Writer, start_console: Start
) -> None:
    writer.report(heartbeat("enf-a", keys=[], counters={"bans_applied": 3}))
    writer.report(heartbeat("enf-old", at=utcnow() - timedelta(minutes=5)))
    writer.report(heartbeat("amps1", role="shipper", counters={"events_shipped": 1234}, lag=0.2))
    writer.report(heartbeat("proc-1", role="processor", counters={"decisions": 7}))
    writer.flush()
    srv, _ = start_console()
    browser.get(srv.url + "/fleet")
    silent = wait_for(
        "the silent enforcer",
        lambda: browser.find_elements(By.CSS_SELECTOR, 'tr.silent[data-host="enf-old"]'),
    )[0]
    assert silent.find_element(By.CSS_SELECTOR, "td.state").text == "SILENT"
    red = silent.find_element(By.CSS_SELECTOR, "td.state").value_of_css_property("color")
    assert red.startswith("rgba(198, 40, 40"), red
    alive = browser.find_element(By.CSS_SELECTOR, 'tr.alive[data-host="amps1"]')
    assert "events_shipped=1234" in alive.text
    assert "1 silent" in browser.find_element(By.CSS_SELECTOR, "p.summary").text
    shot(browser, artefacts, "fleet")


def test_history_page_charts_bans_per_minute_by_jail(
    browser: Any, artefacts: Path, writer: Writer, start_console: Start
) -> None:
    now = utcnow()
    for i in range(6):
        writer.decision(decision(f"192.0.2.{10 + i}", at=now - timedelta(minutes=i * 3)))
    writer.decision(decision("192.0.2.99", jail="ssh", at=now - timedelta(minutes=2)))
    writer.decision(decision("192.0.2.10", action="unban", at=now - timedelta(seconds=30)))
    writer.decision(decision("192.0.2.200", at=now - timedelta(hours=3)))  # outside the range
    writer.flush()
    srv, _ = start_console()
    browser.get(srv.url + "/history?since=30m")
    summary = wait_for("the history summary", lambda: browser.find_element(By.ID, "history-summary")).text
    assert summary.startswith("8 decisions") and "7 bans, 1 unban" in summary
    legend = browser.find_element(By.CSS_SELECTOR, "figure.chart figcaption").text
    assert "amps (6)" in legend and "ssh (1)" in legend and "per minute" in legend
    assert len(browser.find_elements(By.CSS_SELECTOR, "figure.chart rect.bar")) == 7
    assert "192.0.2.200" not in browser.find_element(By.CSS_SELECTOR, "table.history").text
    shot(browser, artefacts, "history")


# ------------------------------------------------------------------------------------- security


def test_with_a_token_every_request_needs_it(
    browser: Any, artefacts: Path, writer: Writer, start_console: Start
) -> None:
    token = "s3cret-token-for-the-console"
    writer.ban(decision("203.0.113.5"))
    writer.flush()
    # on loopback, so without TLS (off loopback the console also needs --tls-cert/--tls-key:
    # tests/fleet2ban/console/test_console_hostile.py); a configured token is required the same way everywhere
    srv, _ = start_console(host="127.0.0.1", token=token)

    # without the token: pages redirect to the login, everything else is refused
    for path in ("/bans/live", "/stream", "/api/status", "/metrics", "/fleet/live"):
        assert httpx.get(srv.url + path, timeout=5).status_code == 401, path
    r = httpx.get(srv.url + "/bans", headers={"accept": "text/html"}, timeout=5)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert httpx.get(srv.url + "/healthz", timeout=5).status_code == 200
    assert httpx.get(srv.url + "/api/status", headers={"authorization": f"Bearer {token}"}).status_code == 200
    assert httpx.post(srv.url + "/bans/add", headers={"authorization": "Bearer wrong"}).status_code == 401

    browser.delete_all_cookies()
    browser.get(srv.url + "/bans?jail=amps")
    wait_for("the login page", lambda: browser.find_element(By.ID, "token"))
    assert "/login" in browser.current_url
    assert row(browser, "203.0.113.5") is None
    shot(browser, artefacts, "login")
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.ID, "login-submit").click()
    assert wait_for("the error", lambda: browser.find_element(By.ID, "login-error")).text == "Wrong token."
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "login-submit").click()
    wait_for("the bans page after login", lambda: row(browser, "203.0.113.5"))
    assert browser.current_url.endswith("/bans?jail=amps")
    cookie = browser.get_cookie("f2b_console")
    assert cookie is not None and cookie["httpOnly"] and cookie["value"] != token
    # the stream works with the session: a new ban shows up live
    wait_for("the live stream to open", lambda: browser.find_element(By.ID, "live-state").text == "live")
    writer.ban(decision("203.0.113.6"))
    writer.flush()
    wait_for("a live update after login", lambda: row(browser, "203.0.113.6"))
    browser.delete_all_cookies()


def test_security_headers_and_read_only_by_default(writer: Writer, start_console: Start) -> None:
    writer.flush()
    srv, _ = start_console()
    r = httpx.get(srv.url + "/bans", timeout=5)
    assert r.status_code == 200
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert "<script>" not in r.text and " style=" not in r.text and " on" not in r.text.replace(" one", "")
    js = httpx.get(srv.url + "/static/console.js", timeout=5)
    assert js.status_code == 200 and js.headers["x-content-type-options"] == "nosniff"
    # read-only: no write forms, and writes are refused
    assert httpx.get(srv.url + "/manual", timeout=5).status_code == 403
    assert httpx.post(srv.url + "/bans/add", data={"target": "203.0.113.9"}, timeout=5).status_code == 403
    # DNS rebinding: a foreign Host header is refused on the loopback console
    assert httpx.get(srv.url + "/bans", headers={"host": "evil.example:80"}, timeout=5).status_code == 400
    health = httpx.get(srv.url + "/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["ok"] is True
    assert "fleet2ban_console_requests_total" in httpx.get(srv.url + "/metrics", timeout=5).text


def test_manual_ban_from_the_page_records_the_operator(
    browser: Any, artefacts: Path, cluster: Cluster, start_console: Start
) -> None:
    srv, _ = start_console(allow_write=True)
    t0 = utcnow()
    browser.get(srv.url + "/manual?action=ban&target=203.0.113.50")
    form = wait_for("the ban form", lambda: browser.find_element(By.ID, "ban-form"))
    form.find_element(By.NAME, "reason").send_keys("credential stuffing")
    form.find_element(By.NAME, "by").send_keys("alice")
    form.find_element(By.NAME, "duration").send_keys("10m")
    shot(browser, artefacts, "manual")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for("the confirmation dialog", lambda: browser.switch_to.alert).accept()
    try:
        wait_for("the IP page with the written decision", lambda: browser.find_element(By.ID, "written"))
    except AssertionError:
        print(browser.current_url, browser.find_element(By.TAG_NAME, "body").text)
        raise
    found = wait_for(
        "the decision on the decisions topic",
        lambda: [
            d for d in read_decisions(cluster, t0 - timedelta(seconds=5), None) if d.ip == "203.0.113.50"
        ],
    )
    d = found[0]
    assert (d.action, d.origin, d.by, d.reason, d.jail) == (
        "ban",
        "manual",
        "alice",
        "credential stuffing",
        "amps",
    )
    assert d.expires_at is not None and abs((d.expires_at - d.at).total_seconds() - 600) < 1

    # the safety rails refuse loopback before anything is written
    browser.get(srv.url + "/manual?action=ban&target=127.0.0.1")
    form = wait_for("the ban form", lambda: browser.find_element(By.ID, "ban-form"))
    form.find_element(By.NAME, "reason").send_keys("oops")
    form.find_element(By.NAME, "by").send_keys("alice")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for("the confirmation dialog", lambda: browser.switch_to.alert).accept()
    err = wait_for("the refusal", lambda: browser.find_element(By.ID, "write-error")).text
    assert "refusing to ban 127.0.0.1" in err and "loopback" in err
    assert [d.ip for d in read_decisions(cluster, t0 - timedelta(seconds=5), None)] == ["203.0.113.50"]


# --------------------------------------------------------------------------------- broker outage


@pytest.mark.slow
def test_broker_down_shows_a_banner_and_the_console_recovers(
    browser: Any, artefacts: Path, tmp_path: Path, start_console: Start
) -> None:
    """Its own one-node Kafka: killed under the console, then started again on its data."""
    port = free_port()
    kafka = KafkaSettings(bootstrap_servers=f"127.0.0.1:{port}", topic_prefix="outage.", partitions=1)
    broker = LocalKafka(1, port=port, data_dir=tmp_path / "kafka").start()
    try:
        c = resolve(kafka)
        ensure_topics(c)
        w = Writer(c)
        w.ban(decision("192.0.2.50"))
        w.flush()
        srv, live = start_console(kafka=kafka)
        browser.get(srv.url + "/bans")
        wait_for("the ban before the outage", lambda: row(browser, "192.0.2.50"))
        wait_for("the live stream to open", lambda: browser.find_element(By.ID, "live-state").text == "live")
        banner = browser.find_element(By.ID, "broker-banner")
        assert not banner.is_displayed()

        broker.kill(1)
        wait_for("the outage banner", banner.is_displayed, timeout=20)
        assert "unreachable" in banner.text and f"127.0.0.1:{port}" in banner.text
        assert row(browser, "192.0.2.50") is not None  # the last known state stays on screen
        assert httpx.get(srv.url + "/healthz", timeout=5).status_code == 503
        shot(browser, artefacts, "broker-down")
        # a page opened during the outage says so too, and an on-demand read fails with a clear page
        browser.get(srv.url + "/history")
        assert "unreachable" in browser.find_element(By.ID, "error-message").text
        assert browser.find_element(By.ID, "broker-banner").is_displayed()
        browser.get(srv.url + "/bans")

        broker.restart(1)
        broker.wait_ready(60)
        w2 = Writer(c)
        w2.ban(decision("192.0.2.51"))
        w2.flush()
        wait_for(
            "the banner to go", lambda: not browser.find_element(By.ID, "broker-banner").is_displayed(), 30
        )
        wait_for("the ban written after recovery", lambda: row(browser, "192.0.2.51"), timeout=15)
        assert live.status.connected and live.status.caught_up
        shot(browser, artefacts, "broker-recovered")
    finally:
        broker.stop()
