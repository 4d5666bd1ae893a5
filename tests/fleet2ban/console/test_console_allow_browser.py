"""The allow-list in the console, in real headless Chromium against the local Kafka cluster (issue 18 §5):
list, add with a TTL and reason, remove, each with its author on the audit log; a cross-site form post is
refused; the CSRF token is per session."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from console_helpers import wait_for
from selenium.webdriver.common.by import By

from fleet2ban.audit.reader import read_decisions
from fleet2ban.audit.writer import read_allow_list
from fleet2ban.console.live import LiveFleet
from fleet2ban.console.server import ServerThread, running
from fleet2ban.contract import utcnow
from fleet2ban.kafka import Cluster
from fleet2ban.kafka.local import free_port
from fleet2ban.settings import KafkaSettings, Settings

pytestmark = pytest.mark.kafka

Console = tuple[ServerThread, LiveFleet]


@pytest.fixture
def console(kafka_settings: KafkaSettings, cluster: Cluster) -> Iterator[Console]:
    """A writable console on loopback without a token (so no login: its CSRF token is per browser)."""
    with running(Settings(), kafka_settings, host="127.0.0.1", port=free_port(), allow_write=True) as (
        srv,
        live,
    ):
        assert live.wait_until(lambda s: s.caught_up, 20), live.status
        yield srv, live


def entries(browser: Any) -> dict[str, Any]:
    return {e.get_attribute("data-key"): e for e in browser.find_elements(By.CSS_SELECTOR, "tr.entry")}


def submit(browser: Any, form: Any) -> None:
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for("the confirmation dialog", lambda: browser.switch_to.alert).accept()


def test_list_add_and_remove_with_author_on_the_audit_log(
    browser: Any, artefacts: Path, cluster: Cluster, console: Console
) -> None:
    srv, _ = console
    t0 = utcnow()
    browser.delete_all_cookies()
    browser.get(srv.url + "/allow")
    assert wait_for(
        "the empty list", lambda: browser.find_element(By.CSS_SELECTOR, "tr.empty")
    ).text.startswith("No ")

    # add, with a TTL and a reason
    form = browser.find_element(By.ID, "allow-form")
    form.find_element(By.NAME, "network").send_keys("198.51.100.0/24")
    form.find_element(By.NAME, "ttl").send_keys("2h")
    form.find_element(By.NAME, "reason").send_keys("partner office")
    form.find_element(By.NAME, "by").send_keys("alice")
    submit(browser, form)
    wait_for("the confirmation", lambda: browser.find_element(By.ID, "written"))
    row = wait_for("the entry listed", lambda: entries(browser).get("*|198.51.100.0/24"))
    assert row.find_element(By.CSS_SELECTOR, "td.by").text == "alice"
    assert row.find_element(By.CSS_SELECTOR, "td.reason").text == "partner office"
    assert row.find_element(By.CSS_SELECTOR, "td.expires").text.startswith("in ")
    browser.save_screenshot(str(artefacts / "allow.png"))
    (entry,) = read_allow_list(cluster).active(utcnow())
    assert (entry.network, entry.jail, entry.by, entry.reason) == (
        "198.51.100.0/24",
        "*",
        "alice",
        "partner office",
    )
    assert entry.expires_at is not None and abs(
        (entry.expires_at - entry.at) - timedelta(hours=2)
    ) < timedelta(seconds=1)

    # a refused entry says why and writes nothing
    form = browser.find_element(By.ID, "allow-form")
    form.find_element(By.NAME, "network").send_keys("0.0.0.0/0")
    form.find_element(By.NAME, "by").send_keys("alice")
    submit(browser, form)
    assert "every address" in wait_for("the refusal", lambda: browser.find_element(By.ID, "write-error")).text

    # remove, by someone else: recorded with their name
    browser.get(srv.url + "/allow")
    row = wait_for("the entry", lambda: entries(browser).get("*|198.51.100.0/24"))
    row.find_element(By.NAME, "by").send_keys("bob")
    submit(browser, row.find_element(By.CSS_SELECTOR, "form.remove"))
    wait_for("the confirmation", lambda: browser.find_element(By.ID, "written"))
    wait_for("the empty list", lambda: browser.find_element(By.CSS_SELECTOR, "tr.empty"))
    assert read_allow_list(cluster).active(utcnow()) == []
    audit = wait_for(
        "both audit records on decisions",
        lambda: (
            [
                (d.action, d.ip, d.by)
                for d in read_decisions(cluster, t0 - timedelta(seconds=5), None)
                if d.action in ("allow", "unallow")
            ]
            or None
        ),
    )
    assert audit == [("allow", "198.51.100.0/24", "alice"), ("unallow", "198.51.100.0/24", "bob")]


class _Evil(BaseHTTPRequestHandler):
    """Another site: a page whose form posts to the console (with a CSRF token it somehow learned)."""

    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(self.page)))
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, format: str, *a: Any) -> None:
        pass


@contextlib.contextmanager
def evil_site(page: str) -> Iterator[str]:
    handler = type("Evil", (_Evil,), {"page": page.encode()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://localhost:{server.server_address[1]}/"  # another site than 127.0.0.1
    finally:
        server.shutdown()
        server.server_close()


def test_a_cross_site_form_post_is_refused(browser: Any, cluster: Cluster, console: Console) -> None:
    srv, _ = console
    browser.delete_all_cookies()
    browser.get(srv.url + "/allow")  # the victim has a session with the console
    token = wait_for("the form token", lambda: browser.find_element(By.NAME, "csrf")).get_attribute("value")
    assert token
    page = (
        f'<form method="post" action="{srv.url}/allow/add" id="evil">'
        f'<input type="hidden" name="csrf" value="{token}">'
        '<input type="hidden" name="network" value="203.0.113.0/24">'
        '<input type="hidden" name="by" value="mallory">'
        '<button type="submit" id="go">win a prize</button></form>'
    )
    with evil_site(page) as url:
        browser.get(url)
        wait_for("the evil page", lambda: browser.find_element(By.ID, "go")).click()
        body = wait_for("the console's answer", lambda: browser.find_element(By.TAG_NAME, "h1")).text
    assert body == "Refused"
    assert "Bad or missing form token" in browser.find_element(By.TAG_NAME, "main").text
    assert read_allow_list(cluster).entries == {}


def test_the_form_token_is_per_session(cluster: Cluster, console: Console) -> None:
    srv, _ = console
    with httpx.Client(base_url=srv.url, timeout=10) as a, httpx.Client(base_url=srv.url, timeout=10) as b:
        tokens = []
        for client in (a, b):
            html = client.get("/allow").text
            tokens.append(html.split('name="csrf" value="', 1)[1].split('"', 1)[0])
        assert tokens[0] != tokens[1] and all(len(t) == 64 for t in tokens)
        assert tokens[0] == a.get("/allow").text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        form = {"network": "203.0.113.7", "by": "mallory"}
        # b's session with a's token: refused; without any session: refused
        assert b.post("/allow/add", data={**form, "csrf": tokens[0]}).status_code == 403
        assert (
            httpx.post(srv.url + "/allow/add", data={**form, "csrf": tokens[0]}, timeout=10).status_code
            == 403
        )
        assert read_allow_list(cluster).entries == {}
        r = a.post("/allow/add", data={**form, "csrf": tokens[0]}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/allow?written=")
        assert list(read_allow_list(cluster).entries) == ["*|203.0.113.7"]
