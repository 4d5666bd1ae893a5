"""The recidive jail against fail2ban's own (Debian package): which bans count, and when it bans.

fail2ban's ``[recidive]`` jail (jail.conf: ``findtime = 1d``, ``bantime = 1w``, maxretry 5 from
[DEFAULT]) reads fail2ban's log with ``filter.d/recidive.conf``: a ``NOTICE [JAIL] Ban IP`` line of any
jail but ``recidive`` is a failure; ``Unban``, ``Restore Ban`` (bans restored at a restart) and its own
bans are not. Here the decisions of fleet2ban's core are written as fail2ban would log them, the installed
filter (run by ``fail2ban-regex``) says which lines count, and fail2ban's ``FailManager`` says when those
failures ban. fleet2ban counts the same bans and bans at the same moment, except at the window's edge: a
ban exactly findtime old still counts for fail2ban (closed window), not for the exact window.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fleet2ban.contract import Decision, Event, from_epoch
from fleet2ban.settings import JailSettings
from processor.engine import Engine
from processor.policy import Policy

pytestmark = [pytest.mark.fail2ban]

FILTER = Path("/etc/fail2ban/filter.d/recidive.conf")
DAY = 86400.0
BASE = 1_764_000_000.0
IP = "198.51.100.7"
needs_fail2ban = pytest.mark.skipif(
    not FILTER.is_file() or shutil.which("fail2ban-regex") is None, reason="needs fail2ban (Debian package)"
)


def _policy() -> Policy:
    jails = [
        JailSettings(name="amps", reasons=["auth"], maxretry=3, findtime=10, bantime=600),
        JailSettings(name="inuse", reasons=["name in use"], maxretry=3, findtime=10, bantime=600),
        # fail2ban's [recidive] of jail.conf
        JailSettings(name="recidive", source="bans", maxretry=5, findtime=DAY, bantime=7 * DAY),
    ]
    return Policy.from_settings(jails, lateness=5.0)


def _attack(hours: list[float]) -> list[Event]:
    evs = []
    for k, h in enumerate(hours):
        reason = "auth" if k % 2 == 0 else "name in use"
        for i in range(3):
            t = BASE + h * 3600 + 0.1 * i
            evs.append(
                Event(host="h1", ip=IP, id=f"h1:{k}:{i}", ts=from_epoch(t), port=1, client="c", reason=reason)
            )
    return evs


def _fail2ban_log(decisions: list[Decision]) -> list[tuple[Decision | None, str]]:
    """The decisions as fail2ban logs them, plus a ``Restore Ban`` of each ban (a restart re-applying it)."""
    out: list[tuple[Decision | None, str]] = []
    for d in decisions:
        stamp = d.at.strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
        what = "Ban" if d.action == "ban" else "Unban"
        out.append((d, f"{stamp} fail2ban.actions        [42]: NOTICE  [{d.jail}] {what} {d.ip}"))
        if d.action == "ban":
            out.append((None, f"{stamp} fail2ban.actions        [42]: NOTICE  [{d.jail}] Restore Ban {d.ip}"))
    return out


def _matched(tmp_path: Path, lines: list[str]) -> list[str]:
    log = tmp_path / "fail2ban.log"
    log.write_text("".join(f"{ln}\n" for ln in lines))
    res = subprocess.run(
        ["fail2ban-regex", "--print-all-matched", str(log), str(FILTER)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    section = res.stdout.split("Matched line(s):", 1)[1].split("`-", 1)[0]
    return [ln.strip().removeprefix("|").strip() for ln in section.splitlines() if "NOTICE" in ln]


def _failmanager_bans(times: list[float], maxretry: int, findtime: float) -> list[float]:
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
        fm.addFailure(FailTicket(IP, t))
        try:
            fm.toBan()
            out.append(t)
        except Exception:  # FailManagerEmpty: not (yet) banned
            pass
    return out


@needs_fail2ban
@pytest.mark.parametrize(
    ("hours", "same"),
    [
        ([0, 3, 6, 9, 12, 15, 30, 33], True),  # five bans in 12 h: both ban at the fifth
        ([0, 6, 12, 18, 24, 30], False),  # the first ban exactly a day old at the fifth: fail2ban only
    ],
)
def test_the_bans_fail2ban_s_recidive_counts_and_when_it_bans(
    tmp_path: Path, hours: list[float], same: bool
) -> None:
    out = Engine(_policy()).feed(_attack(hours))
    decisions = [o.decision for o in out]
    logged = _fail2ban_log(decisions)
    matched = set(_matched(tmp_path, [text for _, text in logged]))
    counted_by_f2b = [d for d, text in logged if text in matched]
    assert None not in counted_by_f2b  # no "Restore Ban"
    # the lines fail2ban's filter counts are exactly the bans fleet2ban's recidive jail counts
    ours = [d for d in decisions if d.action == "ban" and d.jail != "recidive"]
    assert counted_by_f2b == ours
    f2b_bans = _failmanager_bans([d.at.timestamp() for d in ours], 5, DAY)
    recidive = [d.at.timestamp() for d in decisions if d.action == "ban" and d.jail == "recidive"]
    if same:
        assert recidive == f2b_bans and len(recidive) == 1
        (r,) = [d for d in decisions if d.jail == "recidive" and d.action == "ban"]
        assert r.expires_at is not None and r.expires_at.timestamp() - r.at.timestamp() == 7 * DAY
    else:
        assert recidive == [] and f2b_bans == [ours[4].at.timestamp()]
