"""``fleet2ban console`` as an operator runs it: a subprocess serving the pages, stopped by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from console_helpers import Writer, decision, wait_for

from fleet2ban.kafka import Cluster
from fleet2ban.kafka.local import free_port
from fleet2ban.settings import KafkaSettings

pytestmark = pytest.mark.kafka


def test_console_command_serves_and_stops_on_sigterm(kafka_settings: KafkaSettings, cluster: Cluster) -> None:
    w = Writer(cluster)
    w.ban(decision("203.0.113.44"))
    w.flush()
    port = free_port()
    env = {**os.environ, "FLEET2BAN_KAFKA__PARTITIONS": "3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet2ban.cli.main", "-b", str(kafka_settings.bootstrap_servers),
         "--topic-prefix", kafka_settings.topic_prefix, "console", "--bind", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            try:
                return httpx.get(url + "/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for("the console to serve and catch up", healthy, timeout=30, every=0.1)
        page = httpx.get(url + "/bans", timeout=5).text
        assert "203.0.113.44" in page and "read-only" in page
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        out, _ = proc.communicate(timeout=15)
        assert proc.returncode == 0, out
        assert time.monotonic() - t0 < 10
        assert f"console on http://127.0.0.1:{port}/" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
