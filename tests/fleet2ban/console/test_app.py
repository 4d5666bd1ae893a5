"""The console app without Kafka or a browser: a fixed view, fake readers, Starlette's test client."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from console_helpers import HOSTILE, decision, failures, heartbeat
from starlette.testclient import TestClient
from typer.testing import CliRunner

from fleet2ban.allowlist import AllowList, new_entry
from fleet2ban.audit.reader import TargetRecords
from fleet2ban.audit.view import FleetView
from fleet2ban.cli.main import app as cli_app
from fleet2ban.console.app import ConsoleConfig, create_app
from fleet2ban.console.live import LiveFleet
from fleet2ban.contract import BanState, Decision, Event, ban_key, utcnow
from fleet2ban.kafka import Cluster
from fleet2ban.settings import KafkaSettings, Settings

TOKEN = "0123456789abcdef-token"


class FakeReaders:
    def __init__(self) -> None:
        self.published: list[Decision] = []
        self.decisions_list: list[Decision] = []
        self.events: list[Event] = []
        self.allow = AllowList()

    def target(self, cluster: Cluster, target: str, now: datetime, jails: list[str]) -> TargetRecords:
        ds = [d for d in self.decisions_list if d.ip == target]
        return TargetRecords(ds, [], [BanState.from_decision(d) for d in ds if d.action == "ban"])

    def failures(self, cluster: Cluster, ip: str, since: datetime) -> list[Event]:
        return [e for e in self.events if e.ip == ip]

    def decisions(self, cluster: Cluster, since: datetime, until: datetime) -> list[Decision]:
        return list(self.decisions_list)

    def allow_list(self, cluster: Cluster) -> AllowList:
        return self.allow

    def publish(self, cluster: Cluster, decision: Decision) -> None:
        self.published.append(decision)


def make(
    *, token: str | None = None, allow_write: bool = False, trusted: tuple[str, ...] | None = None
) -> tuple[TestClient, FakeReaders]:
    view = FleetView()
    hostile = decision("198.51.100.7", origin="manual", by=HOSTILE, reason=HOSTILE)
    view.add_ban(ban_key("amps", hostile.ip), BanState.from_decision(hostile), hostile.at)
    view.add_report(heartbeat("enf-a", keys=[]))
    live = LiveFleet.fixed(view, KafkaSettings(bootstrap_servers="127.0.0.1:9"))
    live._cluster = Cluster(KafkaSettings(), "127.0.0.1:9")  # the fakes never use it
    readers = FakeReaders()
    readers.decisions_list.append(hostile)
    readers.events.extend(failures("amps1", hostile.ip, [HOSTILE, "ok"]).events())
    config = ConsoleConfig(settings=Settings(), token=token, allow_write=allow_write, trusted_hosts=trusted)
    return TestClient(create_app(config, live, readers), base_url="http://testserver"), readers


def test_attacker_text_is_escaped_on_every_page() -> None:
    client, _ = make()
    for path in ("/bans", "/bans/live", "/ip/198.51.100.7", "/history"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert "<script>window.__pwned" not in r.text and "<img src=x" not in r.text, path
        assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in r.text, path


def test_bad_queries_are_pages_not_errors() -> None:
    client, _ = make()
    r = client.get("/bans?sort=<script>")
    assert r.status_code == 400 and "sort must be one of" in r.text and "<script>" not in r.text
    assert client.get("/bans?ip=nope").status_code == 400
    assert client.get("/history?since=yesterday-ish").status_code == 400
    assert client.get("/history?since=40d").status_code == 400
    assert client.get("/ip/not-an-address").status_code == 400
    assert client.get("/nowhere").status_code == 404
    r = client.get("/ip?target=198.51.100.7", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ip/198.51.100.7"


def test_every_response_has_the_security_headers() -> None:
    client, _ = make(token=TOKEN)
    for path in ("/login", "/bans", "/static/console.css", "/healthz", "/nowhere"):
        r = client.get(path, follow_redirects=False)
        assert r.headers["x-frame-options"] == "DENY", path
        assert "script-src 'self'" in r.headers["content-security-policy"], path


def test_token_login_and_logout() -> None:
    client, _ = make(token=TOKEN)
    r = client.get("/bans?jail=amps", headers={"accept": "text/html"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Fbans%3Fjail%3Damps"
    assert client.post("/login", data={"token": "wrong", "next": "/bans"}).status_code == 401
    r = client.post("/login", data={"token": TOKEN, "next": "//evil.example/"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/bans"
    cookie = r.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and TOKEN not in cookie
    assert client.get("/bans/live").status_code == 200
    assert client.post("/logout").status_code == 403  # no form token: a cross-site logout is refused
    client.post("/logout", data={"csrf": _csrf(client.get("/bans").text)})
    assert client.get("/bans/live").status_code == 401


def test_trusted_hosts_on_loopback() -> None:
    client, _ = make(trusted=("127.0.0.1", "localhost"))
    assert client.get("/bans", headers={"host": "localhost:8080"}).status_code == 200
    assert client.get("/bans", headers={"host": "attacker.example"}).status_code == 400


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert m
    return m.group(1)


def test_writes_need_allow_write_csrf_and_pass_the_rails() -> None:
    client, readers = make(allow_write=True)
    csrf = _csrf(client.get("/manual").text)
    form = {"target": "203.0.113.9", "reason": "scanner", "by": "alice", "duration": "1h", "csrf": csrf}
    assert client.post("/bans/add", data={**form, "csrf": "forged"}).status_code == 403
    assert client.post("/bans/add", data=form, headers={"origin": "http://evil.example"}).status_code == 403
    r = client.post("/bans/add", data=form, headers={"origin": "http://testserver"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ip/203.0.113.9?written=mb-")
    d = readers.published[-1]
    assert (d.action, d.ip, d.by, d.reason, d.origin) == ("ban", "203.0.113.9", "alice", "scanner", "manual")
    assert d.expires_at is not None and d.expires_at - d.at == timedelta(hours=1)
    for target, why in (("127.0.0.1", "loopback"), ("10.0.0.0/8", "wider")):
        r = client.post("/bans/add", data={**form, "target": target})
        assert r.status_code == 400 and why in r.text
    # an allow-list entry in force: the ban is refused before anything is written, naming the entry
    readers.allow.put(
        new_entry("203.0.113.0/24", jail=None, ttl=None, reason="lab", by="bob", now=utcnow(), jails=["amps"])
    )
    n = len(readers.published)
    r = client.post("/bans/add", data=form)
    assert (
        r.status_code == 400 and "allow-list entry 203.0.113.0/24" in r.text and len(readers.published) == n
    )
    readers.allow = AllowList()
    assert client.post("/bans/add", data={**form, "by": ""}).status_code == 400
    r = client.post("/bans/remove", data={**form, "target": "198.51.100.7"}, follow_redirects=False)
    assert r.status_code == 303 and readers.published[-1].action == "unban"
    assert len(readers.published) == 2

    ro, ro_readers = make()
    assert ro.post("/bans/add", data=form).status_code == 403
    page = ro.get("/ip/198.51.100.7").text
    assert "/manual?" not in page and 'action="/bans/add"' not in page
    assert ro_readers.published == []


def test_health_reflects_the_follower() -> None:
    client, _ = make()
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["ok"] is True
    down = LiveFleet(KafkaSettings(bootstrap_servers="127.0.0.1:9"))  # never started: not connected
    c2 = TestClient(create_app(ConsoleConfig(settings=Settings()), down))
    r = c2.get("/healthz")
    assert r.status_code == 503 and "Connecting to Kafka at 127.0.0.1:9" in r.json()["banner"]
    assert "Connecting to Kafka" in c2.get("/bans").text
    assert c2.get("/history").status_code == 503  # an on-demand read needs the broker


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLI reconfigures the root logger onto the runner's (then closed) stream: put pytest's back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_cli_refuses_off_loopback_without_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET2BAN_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:9")
    runner = CliRunner()
    r = runner.invoke(cli_app, ["console", "--bind", "0.0.0.0:8099"])
    assert r.exit_code == 2 and "needs a token" in r.output
    short = tmp_path / "t"
    short.write_text("short")
    r = runner.invoke(cli_app, ["console", "--bind", "0.0.0.0:8099", "--token-file", str(short)])
    assert r.exit_code == 2 and "too short" in r.output
    r = runner.invoke(cli_app, ["console", "--help"])
    assert r.exit_code == 0 and "--allow-write" in r.output and "--token-file" in r.output
