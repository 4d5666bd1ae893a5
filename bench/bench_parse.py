"""Parse rate: `fleet2ban parse` vs `fail2ban-regex` with the seed's filter on the same generated log.

Both run as child processes on the same file, in the same run; the table gives lines/s by wall clock and
by CPU time (user + sys of the child, which is fairer on a shared machine) and the ratios. The seed's
filter uses the datepattern that honours AMPS's UTC offset (shared/notes/firewall-and-fail2ban.md).
Target: at least 20x fail2ban-regex. The command's start-up (its CPU time on an empty file) is printed too,
with the rate and ratio without it, since at this speed it is a good part of the total.

    python -m bench parse [--lines N] [--dir DIR] [--keep] [--no-fail2ban]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._amps_log import generate

DATEPATTERN = r"^%Y-%m-%dT%H:%M:%S\.\d+%z"
SEED_FILTER = (
    "[Definition]\n"
    "failregex = info: 07-0013.*\\(<HOST>:[\\d]+\\) disconnected: (auth|name in use)\n"
    "datepattern = ^%%Y-%%m-%%dT%%H:%%M:%%S\\.\\d+%%z\n"
)


def run_child(cmd: list[str], stdout_path: str = os.devnull) -> tuple[float, float, float, str]:
    """(wall s, cpu s, peak RSS MB, stderr) of one child process."""
    with open(stdout_path, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        err = proc.stderr.read().decode(errors="replace")
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}): {err[-2000:]}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, err


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench parse")
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-fail2ban", action="store_true")
    args = ap.parse_args(argv)
    work = args.dir or Path(tempfile.mkdtemp(prefix="f2b-bench-parse-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        log = work / "amps.log"
        t0 = time.perf_counter()
        generate(log, args.lines, n_ips=5000)
        print(
            f"generated {args.lines:,} lines ({log.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f}s"
        )
        fleet2ban = str(Path(sys.executable).with_name("fleet2ban"))
        rows = []
        wall, cpu, rss, err = run_child([fleet2ban, "parse", str(log), "--host", "bench"])
        m = re.search(r"lines=(\d+) events=(\d+)", err)
        assert m and int(m.group(1)) == args.lines, err
        rows.append(("fleet2ban parse", wall, cpu, rss, f"{int(m.group(2)):,} events (JSON to /dev/null)"))
        empty = work / "empty.log"
        empty.write_bytes(b"")
        startup = min(run_child([fleet2ban, "parse", str(empty), "--host", "bench"])[1] for _ in range(3))
        if not args.no_fail2ban:
            f2b = shutil.which("fail2ban-regex")
            if f2b is None:
                print("fail2ban-regex not found (apt-get install fail2ban): no reference", file=sys.stderr)
            else:
                flt = work / "amps.conf"
                flt.write_text(SEED_FILTER)
                wall2, cpu2, rss2, _ = run_child(
                    [f2b, "--datepattern", DATEPATTERN, str(log), str(flt)], str(work / "f2b.out")
                )
                out = (work / "f2b.out").read_text(errors="replace")
                lm = re.search(r"Lines: (\d+) lines, (\d+) ignored, (\d+) matched, (\d+) missed", out)
                hits = re.search(r"\[(\d+)\] \^?%?Y", out) or re.search(r"\|-\s+\[(\d+)\]", out)
                detail = f"{int(lm.group(3)):,} matched" if lm else "?"
                if hits:
                    detail += f", {int(hits.group(1)):,} date hits"
                rows.append(("fail2ban-regex (seed filter)", wall2, cpu2, rss2, detail))
        ref = rows[-1]
        print()
        print(
            f"{'tool':<30} {'wall s':>8} {'lines/s':>10} {'CPU s':>8} {'lines/s CPU':>12} {'RSS MB':>7}  notes"
        )
        for name, w, c, r, note in rows:
            print(
                f"{name:<30} {w:8.2f} {args.lines / w:10,.0f} {c:8.2f} {args.lines / c:12,.0f} {r:7.0f}  {note}"
            )
        if len(rows) > 1:
            ours = rows[0]
            print(
                f"\nratio fleet2ban / fail2ban-regex: {ref[1] / ours[1]:.1f}x by wall clock, "
                f"{ref[2] / ours[2]:.1f}x by CPU time (target 20x)"
            )
            print(
                f"fleet2ban parse start-up (an empty file): {startup:.2f} CPU s; without it "
                f"{args.lines / max(1e-9, ours[2] - startup):,.0f} lines per CPU-s, "
                f"{ref[2] / max(1e-9, ours[2] - startup):.1f}x by CPU time"
            )
        return 0
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
