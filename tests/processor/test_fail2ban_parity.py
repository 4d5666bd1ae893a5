"""Parity with the real fail2ban (Debian package), and where its rate estimate differs from the exact window.

1. ``test_same_bans_as_fail2ban_on_bursts``: fail2ban's server runs from a private config dir with the
   seed's filter and jail (plus the datepattern that honours AMPS's UTC offset), with an action that only
   records the ban. A burst log is appended to its log file while it runs; ``fleet2ban replay`` reads the
   same file. Same IPs banned, at the same moments (fail2ban's time has whole seconds: the datepattern
   drops the fraction, so "within a second").
2. ``test_where_fail2ban_rate_estimate_and_exact_window_differ``: fail2ban's own ``FailManager`` (the
   installed package's code) against the core on streams that outlast findtime. fail2ban keeps one
   counter per IP; once failures span more than findtime it rescales the counter by the observed rate
   (``FailTicket.adjustTime``: ``retry = round(retry / (t - first) * findtime)``) instead of dropping the
   failures that left the window. So failures older than findtime still weigh on the count: two bursts
   of 12 failures 10.5 s apart (findtime 10, maxretry 20) are banned by fail2ban and not by the exact
   window, which never holds more than 12. Its window is also closed on the left (a failure exactly
   findtime old still counts) where DESIGN §3's is open.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from fleet2ban.cli.main import app as cli_app
from fleet2ban.contract import Decision, Event, from_epoch
from fleet2ban.settings import JailSettings
from fleet2ban.waiting import wait_for
from processor.engine import Engine
from processor.policy import Policy

pytestmark = [pytest.mark.fail2ban]

PST = timezone(timedelta(hours=-8))
SEED_FILTER = Path(__file__).parents[1] / "data" / "seed-amps.conf"


def amps_line(ts: datetime, ip: str, reason: str = "auth", port: int = 51234) -> str:
    stamp = ts.astimezone(PST).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0" + ts.astimezone(PST).strftime("%z")
    stamp = stamp[:-2] + ":" + stamp[-2:]
    host = f"[{ip}]" if ":" in ip else ip
    return f"{stamp} [26] info: 07-0013 client[app-{ip}]({host}:{port}) disconnected: {reason}.\n"


def _f2b(conf: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["fail2ban-client", "-c", str(conf), *args], capture_output=True, text=True, timeout=30, check=check
    )


def _write_config(root: Path) -> tuple[Path, Path, Path]:
    conf, run = root / "conf", root / "run"
    for d in (conf / "filter.d", conf / "action.d", run):
        d.mkdir(parents=True, exist_ok=True)
    log, bans = root / "amps.log", root / "bans.txt"
    log.write_text("")
    (conf / "fail2ban.conf").write_text(
        "[Definition]\nloglevel = INFO\n"
        f"logtarget = {run}/fail2ban.log\nsocket = {run}/fail2ban.sock\npidfile = {run}/fail2ban.pid\n"
        f"dbfile = {run}/fail2ban.sqlite3\nallowipv6 = auto\n"
    )
    (conf / "jail.conf").write_text(
        "[DEFAULT]\nbackend = polling\nusedns = no\n\n"
        f"[amps]\nenabled = true\nfilter = amps\nlogpath = {log}\n"
        "maxretry = 20\nfindtime = 10\nbantime = 120\naction = logban\n"
    )
    shutil.copy(SEED_FILTER, conf / "filter.d" / "amps.conf")
    (conf / "action.d" / "logban.conf").write_text(
        "[Definition]\nactionstart =\nactionstop =\nactioncheck =\n"
        f'actionban = echo "<ip> <time>" >> {bans}\nactionunban =\n'
    )
    return conf, log, bans


def _total_failed(conf: Path) -> int:
    res = _f2b(conf, "status", "amps", check=False)
    for line in res.stdout.splitlines():
        if "Total failed:" in line:
            return int(line.rsplit(":", 1)[1])
    return -1


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("fail2ban-client") is None, reason="needs the fail2ban Debian package")
def test_same_bans_as_fail2ban_on_bursts(tmp_path: Path) -> None:
    conf, log, bans_file = _write_config(tmp_path)
    _f2b(conf, "-x", "start")
    try:
        wait_for(lambda: _total_failed(conf) == 0, 20, "fail2ban to start (its jail answering status)", 0.1)
        now = datetime.now(UTC_)
        # every line within findtime of now and of each other, and in the past; fail2ban ignores a line
        # already findtime old when it reads it, so the oldest keep 4 s of margin for its poller
        t0 = now - timedelta(seconds=6)
        plan: list[tuple[datetime, str, str]] = []
        plan += [(t0 + timedelta(seconds=0.08 * i), "10.1.0.1", "auth") for i in range(25)]  # 25 in 2 s
        plan += [(t0 + timedelta(seconds=0.3 * i + 0.05), "10.1.0.2", "auth") for i in range(20)]  # 20 in 6 s
        plan += [
            (t0 + timedelta(seconds=0.2 * i + 0.02), "10.1.0.3", "auth") for i in range(19)
        ]  # 19: no ban
        plan += [(t0 + timedelta(seconds=0.1 * i + 1.01), "2001:db8::d", "auth") for i in range(20)]
        plan += [(t0 + timedelta(seconds=0.25 * i + 0.5), "10.1.0.5", "name in use") for i in range(20)]
        plan += [
            (t0 + timedelta(seconds=0.1 * i + 0.03), "10.1.0.6", "timeout") for i in range(30)
        ]  # not a failure
        plan.sort()
        matched = sum(1 for _, _, r in plan if r != "timeout")
        with log.open("a") as f:
            f.writelines(amps_line(ts, ip, reason) for ts, ip, reason in plan)
        wait_for(lambda: _total_failed(conf) >= matched, 20, f"fail2ban to read all {matched} failures", 0.1)
        wait_for(
            lambda: bans_file.exists() and bans_file.read_text().count("\n") >= 4,
            10,
            "fail2ban's 4 bans in its action's file",
            0.1,
        )
    finally:
        _f2b(conf, "stop", check=False)
    f2b = {ip: float(t) for ip, t in (line.split() for line in bans_file.read_text().splitlines())}

    res = CliRunner().invoke(cli_app, ["replay", f"amps={log}", "--maxretry", "20", "--findtime", "10"])
    assert res.exit_code == 0, res.output
    ours = [
        msgspec.json.decode(line, type=Decision) for line in res.stdout.splitlines() if line.startswith("{")
    ]
    ours_bans = {d.ip: d.at.timestamp() for d in ours if d.action == "ban"}
    assert set(ours_bans) == set(f2b) == {"10.1.0.1", "10.1.0.2", "2001:db8::d", "10.1.0.5"}
    for ip, at in ours_bans.items():
        assert abs(at - f2b[ip]) < 1.0, (ip, at, f2b[ip])  # fail2ban's clock has whole seconds here


UTC_ = UTC


def _fail2ban_failmanager_bans(times: list[float], maxretry: int, findtime: float) -> list[float]:
    """Feed failure times of one IP to fail2ban's own FailManager; return the times it bans at."""
    sys.path.insert(0, "/usr/lib/python3/dist-packages")
    try:
        from fail2ban.server.failmanager import FailManager  # type: ignore[import-not-found]
        from fail2ban.server.ticket import FailTicket  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    fm = FailManager()
    fm.setMaxRetry(maxretry)
    fm.setMaxTime(findtime)
    out = []
    for t in times:
        fm.addFailure(FailTicket("10.9.9.9", t))
        try:
            fm.toBan()
            out.append(t)
        except Exception:  # FailManagerEmpty: not (yet) banned
            pass
    return out


def _core_bans(times: list[float], maxretry: int, findtime: float) -> list[float]:
    policy = Policy.from_settings([JailSettings(maxretry=maxretry, findtime=findtime, bantime=1e6)], 0.0)
    evs = [
        Event(host="h", ip="10.9.9.9", id=f"h:{i}", ts=from_epoch(t), port=1, client="c", reason="auth")
        for i, t in enumerate(times)
    ]
    return [o.decision.at.timestamp() for o in Engine(policy).feed(evs) if o.decision.action == "ban"]


@pytest.mark.skipif(not Path("/usr/lib/python3/dist-packages/fail2ban").is_dir(), reason="needs fail2ban")
def test_where_fail2ban_rate_estimate_and_exact_window_differ() -> None:
    base = 1_764_000_000.0
    # a burst: both ban at the 20th failure
    burst = [base + 0.1 * i for i in range(30)]
    assert _fail2ban_failmanager_bans(burst, 20, 10) == _core_bans(burst, 20, 10) == [burst[19]]
    # two bursts of 12, 10.5 s apart: never 20 within 10 s, but fail2ban's rescaled counter reaches 20
    two = [base + 0.01 * i for i in range(12)]
    two += [base + 10.5 + 0.01 * i for i in range(12)]
    assert _core_bans(two, 20, 10) == []
    f2b = _fail2ban_failmanager_bans(two, 20, 10)
    assert len(f2b) == 1 and f2b[0] > base + 10.5
    # a steady 1.9 failures/s: the exact window holds 19 at most and never bans; fail2ban's estimate
    # round(retry / span * findtime) hovers at 19-20 and bans
    steady = [base + i / 1.9 for i in range(60)]
    assert _core_bans(steady, 20, 10) == []
    assert _fail2ban_failmanager_bans(steady, 20, 10) != []
    # a failure exactly findtime old: counted by fail2ban (closed window), not by the exact window
    edge = [base + 0.0] + [base + 10.0] * 19
    assert _core_bans(edge, 20, 10) == []
    assert _fail2ban_failmanager_bans(edge, 20, 10) == [base + 10.0]
