"""The console against an attacker and a careless operator (issue 20): one session per login that logout
ends, CSRF on logout, /healthz quiet without the token, TLS required off loopback, hostile form values
refused as 400 (never a 500), operator text unable to forge log lines. No Kafka, no browser."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from fleet2ban.allowlist import AllowList
from fleet2ban.audit.view import FleetView
from fleet2ban.cli.main import app as cli_app
from fleet2ban.console.app import ConsoleConfig, create_app
from fleet2ban.console.exceptions import TokenError
from fleet2ban.console.live import LiveFleet
from fleet2ban.console.security import load_tls
from fleet2ban.contract import Decision
from fleet2ban.kafka import Cluster
from fleet2ban.logs import SafeFormatter
from fleet2ban.settings import KafkaSettings, Settings

TOKEN = "0123456789abcdef-token"


class Published:
    def __init__(self) -> None:
        self.decisions: list[Decision] = []

    def allow_list(self, cluster: Cluster) -> AllowList:
        return AllowList()

    def publish(self, cluster: Cluster, decision: Decision) -> None:
        self.decisions.append(decision)


def make(
    *, token: str | None = None, allow_write: bool = False, tls: bool = False
) -> tuple[TestClient, Published]:
    live = LiveFleet.fixed(FleetView(), KafkaSettings(bootstrap_servers="10.9.8.7:9092"))
    live._cluster = Cluster(KafkaSettings(), "10.9.8.7:9092")  # the fake reader never uses it
    readers = Published()
    config = ConsoleConfig(settings=Settings(), token=token, allow_write=allow_write, tls=tls)
    base = "https://testserver" if tls else "http://testserver"
    return TestClient(create_app(config, live, readers), base_url=base), readers  # type: ignore[arg-type]


def _csrf(html: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
    assert m
    return m.group(1)


def _login(client: TestClient) -> str:
    r = client.post("/login", data={"token": TOKEN, "next": "/bans"}, follow_redirects=False)
    assert r.status_code == 303
    return r.cookies["f2b_console"]


def test_each_login_is_its_own_session_and_logout_ends_it() -> None:
    client, _ = make(token=TOKEN)
    first = _login(client)
    other, _ = make(token=TOKEN)  # another process: other sessions
    assert first != _login(client)  # a new value per login
    stolen = first
    client.cookies.set("f2b_console", stolen)
    assert client.get("/bans/live").status_code == 200
    client.post("/logout", data={"csrf": _csrf(client.get("/bans").text)})
    client.cookies.set("f2b_console", stolen)  # replaying the old cookie after logout
    assert client.get("/bans/live").status_code == 401  # before the fix: still logged in
    other.cookies.set("f2b_console", stolen)
    assert other.get("/bans/live").status_code == 401


def test_logout_needs_the_sessions_form_token_and_our_origin() -> None:
    client, _ = make(token=TOKEN)
    _login(client)
    csrf = _csrf(client.get("/bans").text)
    assert client.post("/logout").status_code == 403  # a cross-site form cannot log the operator out
    assert client.post("/logout", data={"csrf": "forged"}).status_code == 403
    r = client.post("/logout", data={"csrf": csrf}, headers={"origin": "http://evil.example"})
    assert r.status_code == 403
    assert client.get("/bans/live").status_code == 200  # still logged in
    r = client.post(
        "/logout", data={"csrf": csrf}, headers={"origin": "http://testserver"}, follow_redirects=False
    )
    assert r.status_code == 303 and client.get("/bans/live").status_code == 401


def test_healthz_without_the_token_says_only_ok() -> None:
    client, _ = make(token=TOKEN)
    r = client.get("/healthz")
    assert r.json() == {"ok": r.json()["ok"]}
    assert "10.9.8.7" not in r.text
    full = client.get("/healthz", headers={"authorization": f"Bearer {TOKEN}"}).json()
    assert len(full) > 1
    local, _ = make()  # loopback without a token: operators only, the whole status
    assert len(local.get("/healthz").json()) > 1


def test_under_tls_the_session_cookie_is_secure() -> None:
    client, _ = make(token=TOKEN, tls=True)
    r = client.post("/login", data={"token": TOKEN, "next": "/bans"}, follow_redirects=False)
    assert "secure" in r.headers["set-cookie"].lower()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("duration", "nan"),
        ("duration", "inf"),
        ("duration", "99999999999d"),
        ("target", "2001:db8::1%1 timeout 5\nadd f2b-amps-4 10.0.0.1"),
        ("target", "::ffff:0:0/96"),
        ("target", "0.0.0.1"),
        ("jail", "amps|x"),
    ],
)
def test_hostile_form_values_are_400_not_500(field: str, value: str) -> None:
    client, published = make(allow_write=True)
    csrf = _csrf(client.get("/manual").text)
    form = {
        "target": "203.0.113.9",
        "reason": "r",
        "by": "alice",
        "duration": "1h",
        "csrf": csrf,
        field: value,
    }
    r = client.post("/bans/add", data=form)
    assert r.status_code == 400
    assert published.decisions == []


def test_operator_text_cannot_forge_console_log_lines(caplog: pytest.LogCaptureFixture) -> None:
    client, published = make(allow_write=True)
    csrf = _csrf(client.get("/manual").text)
    forged = "x\n2026-01-01 00:00:00 INFO fleet2ban.console: console: manual unban of 10.0.0.1"
    form = {"target": "203.0.113.9", "reason": forged, "by": forged, "duration": "1h", "csrf": csrf}
    with caplog.at_level(logging.INFO, logger="fleet2ban.console.app"):
        r = client.post("/bans/add", data=form, follow_redirects=False)
    assert r.status_code == 303 and published.decisions
    fmt = SafeFormatter("%(levelname)s %(name)s: %(message)s")
    lines = [fmt.format(rec) for rec in caplog.records if "manual ban" in rec.getMessage()]
    assert lines and all("\n" not in ln for ln in lines)


def test_off_loopback_needs_tls(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    result = CliRunner().invoke(cli_app, ["console", "--bind", "0.0.0.0:0", "--token-file", str(token)])
    assert result.exit_code == 2 and "needs TLS" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_tls_files_are_checked_at_start(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("not a certificate")
    key.write_text("not a key")
    with pytest.raises(TokenError, match="cannot use"):
        load_tls(cert, key)
    with pytest.raises(TokenError, match="both"):
        load_tls(cert, None)
    assert load_tls(None, None) is None
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: the good pair is not checked")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
         "-subj", "/CN=console.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    files = load_tls(cert, key)
    assert files is not None and files.cert == cert
