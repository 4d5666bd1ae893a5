"""Web console: first render of the bans page with 100,000 bans in force, and decision-to-screen delay.

Against a fresh local 3-node Apache Kafka and Debian's headless Chromium (Selenium, /usr/bin/chromedriver).
`render`: 100,000 bans in force on `bans` (and three enforcers' heartbeats) are read by the console, then
the browser loads /bans (page 1 of 1,000, 100 rows) cold and warm, a deep page and an IP sort; the
figure is the browser's navigation time (request start to load event), and the reference is the same
page over 100 bans in the same run. `live`: with the 100,000-ban page open, a decision and its `bans`
record are written; the delay is from the write to the row appearing in the page (a MutationObserver
stamps it with the browser's clock, the same machine clock); the reference is a raw consumer on the
`bans` topic seeing the same record. Also shown: the console's catch-up time against a raw read of
the topic. Target: under 1 s each.

    python -m bench console [--bans N] [--small N] [--repeat N] [--live N]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from confluent_kafka import Producer

from bench._kafka import bench_cluster
from bench.fleetbench import ms, percentile, ratio, table
from fleet2ban.audit.reader import Source, TopicReader
from fleet2ban.console.server import running
from fleet2ban.contract import BanState, Decision, Heartbeat, ban_key, encode, utcnow
from fleet2ban.kafka import Cluster, ensure_topics, producer_config, read_to_end, resolve
from fleet2ban.kafka.local import free_port
from fleet2ban.settings import KafkaSettings, Settings

TARGET_S = 1.0
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def _ip(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def _producer(cluster: Cluster, linger_ms: float = 50) -> Producer:
    return Producer(
        {
            **producer_config(cluster, linger_ms=linger_ms),
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 500_000,
            "log_level": 0,
        }
    )


def _produce(p: Producer, topic: str, key: bytes, value: bytes) -> None:
    while True:
        try:
            p.produce(topic, key=key, value=value)
            return
        except BufferError:
            p.poll(0.05)


def _decision(i: int, at_offset_s: float = 0.0) -> Decision:
    now = utcnow() - timedelta(seconds=at_offset_s)
    ip = _ip(i)
    return Decision(
        id=f"b-bench-{i}",
        action="ban",
        ip=ip,
        jail="amps",
        at=now,
        ports=[9007],
        expires_at=now + timedelta(hours=6),
        failures=20 + i % 50,
        hosts=["amps1", "amps2"],
        ban_count=1,
        evidence=[f"07-0013 client[bench-{i}]({ip}:40000) disconnected: auth."],
    )


def populate(cluster: Cluster, n: int) -> None:
    """``n`` bans in force, and three live enforcers (heartbeats bounded to 1,000 keys, as sent)."""
    p = _producer(cluster)
    topics = cluster.topics
    keys: list[str] = []
    for i in range(n):
        d = _decision(i + 1, at_offset_s=(n - i) * 0.01)
        k = ban_key(d.jail, d.ip)
        keys.append(k)
        _produce(p, topics.bans, k.encode(), encode(BanState.from_decision(d)))
    for host in ("enf-a", "enf-b", "enf-c"):
        hb = Heartbeat(
            host=host, role="enforcer", at=utcnow(), interval_s=60.0, applied=keys[-1000:], applied_total=n
        )
        _produce(p, topics.reports, host.encode(), encode(hb))
    assert p.flush(60) == 0


@contextlib.contextmanager
def browser() -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="f2b-bench-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--window-size=1400,1000", f"--user-data-dir={profile}",
    ):  # fmt: skip
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


NAV_JS = """
const t = performance.getEntriesByType('navigation')[0];
return [t.requestStart, t.responseStart, t.loadEventEnd, document.querySelectorAll('tr.ban').length];
"""


def load(driver: Any, url: str) -> tuple[float, float, int]:
    """Load ``url``: (seconds from request to load event, seconds to the first byte, rows shown)."""
    driver.get("about:blank")
    driver.get(url)
    req, first, loaded, rows = driver.execute_script(NAV_JS)
    return (loaded - req) / 1000.0, (first - req) / 1000.0, int(rows)


def wait_caught_up(live: Any, timeout: float = 300.0) -> None:
    if not live.wait_until(lambda s: s.caught_up, timeout):
        raise SystemExit(f"the console did not catch up within {timeout:.0f}s: {live.status}")


OBSERVE_JS = """
window.__seen = {};
new MutationObserver(() => {
  for (const tr of document.querySelectorAll('tr.ban[data-key]')) {
    const k = tr.getAttribute('data-key');
    if (!(k in window.__seen)) window.__seen[k] = Date.now();
  }
}).observe(document.body, {childList: true, subtree: true});
for (const tr of document.querySelectorAll('tr.ban[data-key]')) window.__seen[tr.getAttribute('data-key')] = 0;
"""


def live_delays(driver: Any, cluster: Cluster, url: str, count: int) -> list[float]:
    """Write ``count`` new bans one by one with the page open; seconds from write to row on screen."""
    driver.get(url)
    deadline = time.monotonic() + 10
    while driver.find_element("id", "live-state").text != "live":
        if time.monotonic() > deadline:
            raise SystemExit("the page's event stream did not open")
        time.sleep(0.05)
    driver.execute_script(OBSERVE_JS)
    p = _producer(cluster, linger_ms=0)
    out: list[float] = []
    for j in range(count):
        d = _decision(900_000 + j)  # newest: page 1
        key = ban_key(d.jail, d.ip)
        t_write = time.time()
        p.produce(cluster.topics.decisions, key=d.ip.encode(), value=encode(d))
        p.produce(cluster.topics.bans, key=key.encode(), value=encode(BanState.from_decision(d)))
        p.flush(10)
        deadline = time.monotonic() + 15
        seen = None
        while seen is None:
            if time.monotonic() > deadline:
                raise SystemExit(f"ban {key} did not show up in the page within 15 s")
            seen = driver.execute_script("return window.__seen[arguments[0]] || null;", key)
            time.sleep(0.02)
        out.append(seen / 1000.0 - t_write)
        time.sleep(0.3)  # let the page settle between writes (one change at a time, as an operator sees)
    return out


def raw_delays(cluster: Cluster, count: int) -> list[float]:
    """Reference: a raw no-group consumer (the audit TopicReader) on ``bans`` seeing each new record."""
    seen: dict[bytes, float] = {}
    ready = threading.Event()
    stop = threading.Event()

    def follow() -> None:
        src = [Source("bans", cluster.topics.bans, since=utcnow() - timedelta(seconds=1))]

        def feed(_kind: object, key: bytes | None, _v: bytes | None, _ts: object) -> None:
            if key is not None:
                seen.setdefault(key, time.time())

        with TopicReader(cluster, src, feed) as r:
            r.catch_up()
            ready.set()
            while not stop.is_set():
                r.poll(0.05)

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    ready.wait(60)
    p = _producer(cluster, linger_ms=0)
    out: list[float] = []
    for j in range(count):
        d = _decision(950_000 + j)
        key = ban_key(d.jail, d.ip).encode()
        t_write = time.time()
        p.produce(cluster.topics.bans, key=key, value=encode(BanState.from_decision(d)))
        p.flush(10)
        deadline = time.monotonic() + 10
        while key not in seen and time.monotonic() < deadline:
            time.sleep(0.002)
        out.append(seen.get(key, float("nan")) - t_write)
    stop.set()
    t.join(5)
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench console", description=__doc__.splitlines()[0])
    ap.add_argument("--bans", type=int, default=100_000, help="bans in force (default 100,000)")
    ap.add_argument("--small", type=int, default=100, help="bans of the reference page (default 100)")
    ap.add_argument("--repeat", type=int, default=5, help="warm page loads per case (default 5)")
    ap.add_argument("--live", type=int, default=10, help="live decisions to time (default 10)")
    args = ap.parse_args(argv)

    with bench_cluster() as broker:
        big = KafkaSettings(
            bootstrap_servers=broker.bootstrap,
            topic_prefix="big.",
            partitions=3,
            replication_factor=broker.replication_factor,
        )
        small = KafkaSettings(
            bootstrap_servers=broker.bootstrap,
            topic_prefix="small.",
            partitions=3,
            replication_factor=broker.replication_factor,
        )
        cb, cs = resolve(big), resolve(small)
        ensure_topics(cb)
        ensure_topics(cs)
        t0 = time.perf_counter()
        populate(cb, args.bans)
        populate(cs, args.small)
        produce_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        raw = len(read_to_end(cb, cb.topics.bans, timeout=300))
        raw_read_s = time.perf_counter() - t0
        print(
            f"wrote {args.bans:,} + {args.small:,} bans in {produce_s:.1f}s; raw read of {raw:,}: {raw_read_s:.2f}s"
        )

        settings = Settings()
        rows_out: list[list[object]] = []
        started = utcnow()
        with (
            running(settings, big, port=free_port()) as (srv_big, live_big),
            running(settings, small, port=free_port()) as (srv_small, live_small),
            browser() as driver,
        ):
            wait_caught_up(live_big)
            wait_caught_up(live_small)
            catch_big = (live_big.status.since - started).total_seconds()
            with live_big.read() as view:
                in_force = len(view.bans)
            print(f"console caught up with {in_force:,} bans in {catch_big:.2f}s")

            cases = [
                ("bans page 1", "/bans"),
                ("bans page 500", "/bans?page=500"),
                ("bans sorted by IP", "/bans?sort=ip&order=asc"),
            ]
            first_big = 0.0
            for label, path in cases:
                cold, ttfb_cold, n_rows = load(driver, srv_big.url + path)
                warm = [load(driver, srv_big.url + path) for _ in range(args.repeat)]
                ref = [load(driver, srv_small.url + path.replace("page=500", "page=1"))
                       for _ in range(args.repeat)]  # fmt: skip
                med = statistics.median(w[0] for w in warm)
                ref_med = statistics.median(r[0] for r in ref)
                if label == "bans page 1":
                    first_big = cold
                rows_out.append([
                    label, n_rows, ms(cold), ms(ttfb_cold), ms(med), ms(ref_med), ratio(med, ref_med),
                    "yes" if max(cold, med) < TARGET_S else "NO",
                ])  # fmt: skip
            print()
            print(
                table(
                    [
                        "page",
                        "rows",
                        "cold ms",
                        "cold TTFB ms",
                        "warm p50 ms",
                        f"ref {args.small} bans ms",
                        "ratio",
                        "< 1 s",
                    ],
                    rows_out,
                    title=f"Time to render (request to load event), {args.bans:,} bans in force",
                )
            )

            delays = live_delays(driver, cb, srv_big.url + "/bans", args.live)
        ref_delays = raw_delays(cb, args.live)
        p50, p99 = percentile(delays, 50), percentile(delays, 100)
        r50, r99 = percentile(ref_delays, 50), percentile(ref_delays, 100)
        print()
        print(
            table(
                ["path", "n", "p50 ms", "max ms", "ratio p50", "< 1 s"],
                [
                    [
                        "decision written -> row in the open page",
                        len(delays),
                        ms(p50),
                        ms(p99),
                        ratio(p50, r50),
                        "yes" if p99 < TARGET_S else "NO",
                    ],
                    ["reference: raw consumer on bans", len(ref_delays), ms(r50), ms(r99), "1.00x", ""],
                ],
                title=f"Live delay with {args.bans:,} bans in force (server-sent events + fragment refresh)",
            )
        )
        print()
        print(
            table(
                ["step", "seconds", "ratio"],
                [
                    ["raw read of bans (reference)", f"{raw_read_s:.2f}", "1.00x"],
                    ["console catch-up (decode + fold)", f"{catch_big:.2f}", ratio(catch_big, raw_read_s)],
                ],
                title="Start-up",
            )
        )
        ok = first_big < TARGET_S and p99 < TARGET_S
        print(f"\ntarget (< {TARGET_S:g} s each): {'met' if ok else 'NOT met'}")
        return 0 if ok else 1


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
