"""Generated AMPS ban logs for the shipper benchmarks (deterministic for a given seed)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

T0 = datetime(2026, 11, 25, 6, 0, tzinfo=UTC)
REASONS = ["auth"] * 5 + ["name in use"] + ["connection closed"] * 3 + ["heartbeat"]


def ip_of(i: int) -> str:
    if i % 50 == 49:
        return f"[2001:db8::{i:x}]"
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255 or 1}"


def generate(path: Path, lines: int, n_ips: int, seed: int = 1, flood: bool = False) -> Path:
    """``lines`` lines: 2% 00-0015, the rest 07-0013 from ``n_ips`` addresses (a skewed mix, or a flood
    spread evenly over a few addresses), 1% with hostile client names, AMPS's -08:00 offsets."""
    rnd = random.Random(seed)
    ips = [ip_of(i) for i in range(n_ips)]
    step = timedelta(microseconds=3600)
    with open(path, "w", encoding="ascii") as f:
        out: list[str] = []
        for i in range(lines):
            ts = (T0 + step * i).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0-08:00"
            if i % 50 == 0:
                out.append(f"{ts} [1] info: 00-0015 AMPS is alive.\n")
            else:
                ip = ips[i % n_ips] if flood or n_ips <= 16 else ips[int(rnd.paretovariate(1.1)) % n_ips]
                if n_ips > 16 and not flood and i % 3 == 0:
                    ip = ips[rnd.randrange(n_ips)]
                name = (
                    f"x](203.0.113.{i % 250}:1) disconnected: auth." if i % 100 == 7 else f"loader-{i % 977}"
                )
                port = 1024 + i % 60000
                out.append(
                    f"{ts} [26] info: 07-0013 client[{name}]({ip}:{port}) disconnected: {rnd.choice(REASONS)}.\n"
                )
            if len(out) >= 10000:
                f.write("".join(out))
                out.clear()
        f.write("".join(out))
    return path
