"""End to end with the real processor and two dry-run enforcers (subprocesses) on the session's broker.

A manual ban reaches the enforcers and shows in ``bans list`` with origin manual and its author; a manual
remove lifts it everywhere; ``audit verify`` passes on the healthy fleet and fails, naming the host, once
one enforcer is stopped before a ban.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import pytest
import yaml
from typer.testing import CliRunner

from fleet2ban import waiting
from fleet2ban.cli.main import app
from fleet2ban.kafka import ensure_topics, resolve
from fleet2ban.settings import KafkaSettings

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

T = TypeVar("T")


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 45.0, every: float = 0.3) -> T:
    return waiting.wait_for(check, timeout, what, every)


class E2E:
    def __init__(self, bootstrap: str, tmp: Path) -> None:
        self.bootstrap = bootstrap
        self.prefix = f"e{uuid.uuid4().hex[:8]}."
        self.tmp = tmp
        ensure_topics(
            resolve(KafkaSettings(bootstrap_servers=bootstrap, topic_prefix=self.prefix, partitions=3))
        )
        cfg = {
            "kafka": {"partitions": 3},
            "jails": [{"name": "amps", "bantime": 600, "ignoreip": ["192.0.2.0/24"]}],
            "metrics": {"port": 0, "heartbeat_interval_s": 1.0},
            "enforcer": {"backend": "dryrun", "reconcile_interval_s": 5},
            "processor": {"expiry_interval_s": 0.2},
            "state_dir": str(tmp / "state"),
        }
        self.config = tmp / "fleet.yaml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def base(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "fleet2ban.cli.main",
            "-c",
            str(self.config),
            "-b",
            self.bootstrap,
            "--topic-prefix",
            self.prefix,
        ]

    def start(self, name: str, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET2BAN_")}
        log = open(self.tmp / f"{name}.log", "wb")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(
            [*self.base(), *args], env=env, stdout=log, stderr=subprocess.STDOUT
        )

    def stop(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def logs(self) -> str:
        return "\n".join(
            f"--- {n}\n" + (self.tmp / f"{n}.log").read_text(errors="replace")[-3000:] for n in self.procs
        )

    def cli(self, *args: str, code: int | None = 0) -> Any:
        """Run an operator command in this process (the components run as subprocesses)."""
        res = CliRunner().invoke(app, [*self.base()[3:], *args])
        if code is not None:
            assert res.exit_code == code, (args, res.exit_code, res.stdout, res.stderr, self.logs())
        return res

    def js(self, *args: str, code: int | None = 0) -> Any:
        return msgspec.json.decode(self.cli(*args, "--json", code=code).stdout)


FLOODER = "198.51.100.77"


def amps_lines(ip: str, n: int) -> str:
    """``n`` failed logins of ``ip`` as AMPS writes them, stamped now."""
    now = datetime.now(UTC)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%f") + "0+00:00"
    return "".join(
        f"{stamp} [26] info: 07-0013 client[bot{i}]({ip}:{40000 + i}) disconnected: auth.\n" for i in range(n)
    )


@pytest.fixture
def e2e(kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[E2E]:
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.delenv("FLEET2BAN_CONFIG", raising=False)
    f = E2E(kafka_bootstrap, tmp_path)
    log = tmp_path / "ban.log"
    log.write_text(amps_lines(FLOODER, 25))
    f.start(
        "shipper",
        "shipper",
        "--log",
        str(log),
        "--host",
        "amps1",
        "--from-start",
        "--poll",
        "--checkpoint",
        str(tmp_path / "ship.ckpt"),
        "--metrics-port",
        "0",
    )
    f.start("processor", "processor", "--metrics-port", "0")
    f.start("eA", "enforcer", "--host", "eA")
    f.start("eB", "enforcer", "--host", "eB")
    try:
        yield f
    finally:
        for name in list(f.procs):
            f.stop(name)


def test_manual_ban_reaches_enforcers_and_verify_names_stopped_host(e2e: E2E) -> None:
    def live_enforcers() -> bool:
        hosts = e2e.js("status", code=None)  # exits 1 until the processor has beaten
        return sorted(h["host"] for h in hosts if h["role"] == "enforcer" and not h["silent"]) == ["eA", "eB"]

    wait_for("two live enforcers", live_enforcers)

    # an automatic ban: the shipper's events, the processor's decision, both enforcers apply it
    def auto_ban() -> dict[str, Any] | None:
        for b in e2e.js("bans", "list", "--origin", "auto"):
            if b["ban"]["ip"] == FLOODER and b["coverage"]["applied"] == ["eA", "eB"]:
                return dict(b)
        return None

    b = wait_for("automatic ban of the flooder applied on eA and eB", auto_ban, timeout=60)
    assert b["ban"]["failures"] >= 20 and b["ban"]["hosts"] == ["amps1"]
    show = e2e.js("bans", "show", FLOODER)
    (d,) = show["decisions"]
    assert d["origin"] == "auto" and any("disconnected: auth" in line for line in d["evidence"])
    assert {r["host"] for r in show["reports"] if r["kind"] == "applied"} == {"eA", "eB"}
    shippers = [h for h in e2e.js("status", code=None) if h["role"] == "shipper"]
    assert [h["host"] for h in shippers] == ["amps1"] and shippers[0]["counters"]["events_shipped"] >= 25

    # the rails refuse before anything is written; an ignored address too (jail ignoreip)
    assert "refusing" in e2e.cli("bans", "add", "192.0.2.7", "--reason", "x", code=1).stderr

    # a manual ban: mirrored to bans by the processor, applied by both enforcers
    added = e2e.js(
        "bans", "add", "203.0.113.50", "--for", "1h", "--reason", "scanner", "--by", "dave", "--wait", "60"
    )
    assert added["mirrored"] is True

    def covered(ip: str, hosts: list[str]) -> dict[str, Any] | None:
        for b in e2e.js("bans", "list"):
            if b["ban"]["ip"] == ip and b["coverage"]["applied"] == hosts:
                return dict(b)
        return None

    b = wait_for("ban applied on eA and eB", lambda: covered("203.0.113.50", ["eA", "eB"]))
    assert b["ban"]["origin"] == "manual" and b["ban"]["by"] == "dave" and b["ban"]["reason"] == "scanner"
    table = e2e.cli("bans", "list").stdout
    assert "203.0.113.50" in table and "manual (dave)" in table and "2/2" in table

    # healthy fleet: verify passes (bound generous: the machine is shared)
    wait_for("verify passes", lambda: e2e.cli("audit", "verify", "--within", "20s", code=None).exit_code == 0)

    # stop eB, then ban another address: verify fails and names eB
    e2e.stop("eB")
    e2e.js("bans", "add", "203.0.113.51", "--reason", "second", "--by", "dave", "--wait", "60")
    wait_for("eA applies the second ban", lambda: covered("203.0.113.51", ["eA"]))

    def verify_names_eb() -> dict[str, Any] | None:
        res = e2e.js("audit", "verify", "--within", "2s", code=None)
        if res["ok"]:
            return None
        hosts = {d["host"] for d in res["discrepancies"]}
        return dict(res) if hosts == {"eB"} else None

    res = wait_for("verify fails naming eB", verify_names_eb)
    kinds = {(d["kind"], d["key"]) for d in res["discrepancies"]}
    assert ("missing", "amps|203.0.113.51") in kinds
    out = e2e.cli("audit", "verify", "--within", "2s", code=1).stdout
    assert "eB" in out and "FAILED" in out

    # a manual remove lifts it everywhere (on the live enforcer) and is in the history with its author
    e2e.js("bans", "remove", "203.0.113.50", "--reason", "done", "--by", "erin", "--wait", "60")
    wait_for(
        "ban gone from list", lambda: all(b["ban"]["ip"] != "203.0.113.50" for b in e2e.js("bans", "list"))
    )

    def removed_on_ea() -> bool:
        show = e2e.js("bans", "show", "203.0.113.50")
        return any(r["host"] == "eA" and r["kind"] == "removed" for r in show["reports"])

    wait_for("eA reports the removal", removed_on_ea)
    show = e2e.js("bans", "show", "203.0.113.50")
    assert [(d["action"], d["by"]) for d in show["decisions"]] == [("ban", "dave"), ("unban", "erin")]
    assert show["in_force"] == []
    hist = e2e.js("bans", "history", "--since", "10m", "--origin", "manual")
    assert [(d["action"], d["ip"]) for d in hist] == [
        ("ban", "203.0.113.50"),
        ("ban", "203.0.113.51"),
        ("unban", "203.0.113.50"),
    ]
