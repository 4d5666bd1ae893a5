"""Where a process's time goes: py-spy samples of it, summed by component (bench helper).

``Recording(pid).start()`` runs ``py-spy record --gil`` (only samples holding the GIL: CPU spent in
Python) against a running process until ``stop()``; ``components(path)`` sums the raw samples by the
component of their innermost recognised frame, ``top_self(path)`` lists the hottest functions.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

# (component, substrings of a frame's file) -- the innermost frame that matches decides
COMPONENTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("fleet2ban's own code (decode, jail core, rebuild)", ("processor/", "fleet2ban/")),
    ("Faust tables / changelog", ("faust/tables/",)),
    ("producing (Faust producer buffer, aiokafka sender)", ("faust/transport/producer", "aiokafka/producer")),
    (
        "consuming (aiokafka fetcher, Faust consumer/conductor)",
        ("aiokafka/consumer", "aiokafka/record", "faust/transport/consumer", "faust/transport/conductor"),
    ),
    ("Faust stream / agent iteration", ("faust/streams", "faust/agents", "faust/events", "faust/channels")),
    ("Kafka protocol and connections (aiokafka)", ("aiokafka/",)),
    ("event loop scheduling (asyncio, uvloop)", ("asyncio/", "uvloop", "mode/")),
)
OTHER = "other"


class Recording:
    """``py-spy record`` of one process, written in raw (collapsed stack) form."""

    def __init__(self, pid: int, out: Path, rate: int = 200) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> str | None:
        """The py-spy executable, or None."""
        here = Path(sys.executable).with_name("py-spy")
        return str(here) if here.exists() else shutil.which("py-spy")

    def start(self) -> Recording:
        exe = self.available()
        if exe is None:
            raise RuntimeError("py-spy is not installed (pip install py-spy)")
        args = [exe, "record", "--gil", "-p", str(self.pid), "-r", str(self.rate)]
        args += ["-f", "raw", "-o", str(self.out), "--nonblocking"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def stop(self) -> Path:
        """End the recording (py-spy writes its file on SIGINT) and return the file."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.out


def _samples(path: Path) -> list[tuple[list[str], int]]:
    out = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def component(frames: list[str]) -> str:
    """The component of a stack (outermost first): its innermost frame that matches one."""
    for frame in reversed(frames):
        where = frame[frame.rfind("(") + 1 :]
        for name, needles in COMPONENTS:
            if any(n in where for n in needles):
                return name
    return OTHER


def components(path: Path) -> list[tuple[str, float]]:
    """(component, share of samples), largest first."""
    counts: Counter[str] = Counter()
    total = 0
    for frames, n in _samples(path):
        counts[component(frames)] += n
        total += n
    return [(name, n / total) for name, n in counts.most_common()] if total else []


def top_self(path: Path, k: int = 8) -> list[tuple[str, float]]:
    """The ``k`` functions with the most samples as the innermost frame."""
    counts: Counter[str] = Counter()
    total = 0
    for frames, n in _samples(path):
        counts[frames[-1]] += n
        total += n
    return [(f, n / total) for f, n in counts.most_common(k)] if total else []
