"""``fleet2ban dev``: the whole fleet on one machine, with a live view of bans happening."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from fleet2ban.audit import FleetView, bans_in_force, fleet_status
from fleet2ban.audit.reader import into_view
from fleet2ban.cli.common import fail, handle_errors, sigterm_as_interrupt
from fleet2ban.contract import Decision, utcnow
from fleet2ban.dev.fleet import DevFleet, DevOptions
from fleet2ban.dev.scenario import Scenario
from fleet2ban.kafka import Source, TopicReader
from fleet2ban.logs import setup_logging


class Watcher:
    """Follows bans, reports and decisions into a :class:`FleetView` in a background thread."""

    def __init__(self, fleet: DevFleet) -> None:
        assert fleet.cluster is not None
        self.view = FleetView()
        self.decisions: list[Decision] = []
        t = fleet.cluster.topics
        self._reader = TopicReader(
            fleet.cluster,
            [Source("bans", t.bans), Source("reports", t.reports), Source("decisions", t.decisions)],
            self._feed,
        )
        self._into_view = into_view(self.view)
        self._lock = threading.Lock()
        self._rates: dict[str, tuple[float, float, float]] = {}  # host -> (monotonic, events shipped, rate)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="watcher")

    def _feed(self, kind: Any, key: bytes | None, value: bytes | None, ts: datetime | None) -> None:
        with self._lock:
            self._into_view(kind, key, value, ts)
            if kind == "decisions" and value:
                from fleet2ban.contract import ContractError, decode_decision

                with contextlib.suppress(ContractError):
                    self.decisions.append(decode_decision(value))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._reader.poll(0.2)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._reader.close()

    def render(self, fleet: DevFleet, scenario: Scenario, started: float) -> Group:
        now = utcnow()
        with self._lock:
            bans = bans_in_force(self.view, now)
            status = fleet_status(self.view, now)
            recent = list(self.decisions[-8:])
            actions = Counter(d.action for d in self.decisions)
        hosts = Table(title="hosts", expand=True)
        for col in ("host", "role", "last seen", "events shipped", "events/s", "bans applied", "state"):
            hosts.add_column(col)
        for s in status:
            shipped = s.counters.get("events_shipped")
            rate = self._rate(s.host, shipped) if s.role == "shipper" and shipped is not None else None
            hosts.add_row(
                s.host,
                s.role,
                f"{s.age_s:.1f}s ago" if s.age_s is not None else "-",
                f"{shipped:.0f}" if shipped is not None else "",
                f"{rate:.1f}" if rate is not None else "",
                str(s.applied) if s.applied is not None else "",
                "[red]silent[/red]" if s.silent else "[green]alive[/green]",
            )
        bt = Table(title=f"bans in force ({len(bans)})", expand=True)
        for col in ("ip", "jail", "until", "failures", "origin", "hosts seen", "coverage"):
            bt.add_column(col)
        for bv in bans[:12]:
            b = bv.ban
            left = f"{(b.expires_at - now).total_seconds():.0f}s" if b.expires_at else "permanent"
            cov = bv.coverage
            cov_text = cov.text() + (f" missing {','.join(cov.missing)}" if cov.missing else "")
            bt.add_row(
                b.ip,
                b.jail,
                left,
                str(b.failures),
                b.origin,
                ",".join(b.hosts),
                f"[green]{cov_text}[/green]" if cov.complete else f"[yellow]{cov_text}[/yellow]",
            )
        dt = Table(title=f"decisions (ban {actions['ban']}, unban {actions['unban']})", expand=True)
        for col in ("at", "action", "ip", "failures", "hosts", "origin"):
            dt.add_column(col)
        for d in reversed(recent):
            dt.add_row(
                d.at.strftime("%H:%M:%S.%f")[:-3],
                d.action,
                d.ip,
                str(d.failures),
                ",".join(d.hosts),
                d.origin,
            )
        with scenario.stats.lock:
            att = dict(scenario.stats.outcomes)
            leg = dict(scenario.stats.legit_outcomes)
        header = Panel(
            f"fleet2ban dev: {len(fleet.hosts)} hosts, firewall {fleet.backend}, "
            f"up {time.monotonic() - started:.0f}s, broker {fleet.broker.bootstrap if fleet.broker else '-'}\n"
            f"attackers' attempts: {att}   legitimate client: {leg}   (Ctrl-C stops and cleans up)"
        )
        return Group(header, hosts, bt, dt)

    def _rate(self, host: str, shipped: float) -> float:
        """Events/s shipped by ``host``, from the change of its heartbeat counter (smoothed)."""
        now = time.monotonic()
        last = self._rates.get(host)
        if last is None:
            self._rates[host] = (now, shipped, 0.0)
            return 0.0
        t0, n0, rate = last
        if shipped != n0 and now > t0:
            rate = (shipped - n0) / (now - t0)
            self._rates[host] = (now, shipped, rate)
        elif now - t0 > 5:
            rate = 0.0
            self._rates[host] = (now, shipped, rate)
        return rate

    def summary(self, fleet: DevFleet, scenario: Scenario, started: float) -> dict[str, Any]:
        now = utcnow()
        with self._lock:
            bans = bans_in_force(self.view, now)
            status = fleet_status(self.view, now)
            actions = Counter(d.action for d in self.decisions)
            banned_ips = sorted({d.ip for d in self.decisions if d.action == "ban"})
        return {
            "duration_s": round(time.monotonic() - started, 1),
            "hosts": [h.name for h in fleet.hosts],
            "firewall": fleet.backend,
            "decisions": dict(actions),
            "banned_ips": banned_ips,
            "bans_in_force": [
                {
                    "ip": b.ban.ip,
                    "jail": b.ban.jail,
                    "coverage": b.coverage.text(),
                    "missing": b.coverage.missing,
                }
                for b in bans
            ],
            "components": [{"role": s.role, "host": s.host, "silent": s.silent} for s in status],
            "attack_outcomes": dict(scenario.stats.outcomes),
            "legit_outcomes": dict(scenario.stats.legit_outcomes),
        }


def _show_lines(fleet: DevFleet, watcher: Watcher, console: Console, deadline: float | None) -> None:
    """Until ``deadline`` (or Ctrl-C): each decision as a line."""
    seen = 0
    while deadline is None or time.monotonic() < deadline:
        time.sleep(0.5)
        _check_children(fleet)
        for d in watcher.decisions[seen:]:
            console.print(
                f"{d.at:%H:%M:%S} {d.action:<5} {d.ip:<16} failures={d.failures} "
                f"hosts={','.join(d.hosts)} origin={d.origin}"
            )
        seen = len(watcher.decisions)


def _show_live(
    fleet: DevFleet,
    watcher: Watcher,
    scenario: Scenario,
    console: Console,
    started: float,
    deadline: float | None,
) -> None:
    """Until ``deadline`` (or Ctrl-C): the live view."""
    with Live(watcher.render(fleet, scenario, started), console=console, refresh_per_second=4) as live:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.25)
            _check_children(fleet)
            live.update(watcher.render(fleet, scenario, started))


@handle_errors
def dev(
    hosts: int = typer.Option(3, "--hosts", min=1, max=20, help="simulated AMPS hosts"),
    attackers: int = typer.Option(
        3,
        "--attackers",
        min=0,
        max=20,
        help="attacking clients (bad credentials, a spreader, a duplicated name, in turn)",
    ),
    duration: float = typer.Option(
        0, "--duration", min=0, help="stop after this many seconds (0 = until Ctrl-C)"
    ),
    bantime: float = typer.Option(30.0, "--bantime", help="the dev jail's bantime (s); the seed's is 120"),
    recidive: int = typer.Option(
        0,
        "--recidive",
        min=0,
        max=1000,
        help="also a repeat-offender jail (source: bans): N bans within an hour ban for 10 minutes (0 = none)",
    ),
    json_out: bool = typer.Option(False, "--json", help="print a final summary as JSON on stdout"),
    no_ui: bool = typer.Option(False, "--no-ui", help="no live view; log decisions as lines instead"),
    workdir: Path = typer.Option(None, "--workdir", help="keep logs and state here (default: a temp dir)"),
    netns_opt: bool = typer.Option(
        True, "--netns/--no-netns", help="network namespaces with real firewalls (needs root)"
    ),
) -> None:
    """Run the whole pipeline on this machine: a local Apache Kafka, the processor, and simulated AMPS hosts.

    As root each host is a network namespace with a real firewall (ipset); otherwise the enforcers run
    in dry-run. Every component is its own process. Ctrl-C stops everything and removes every
    namespace, chain, set and process it made.
    """
    setup_logging("WARNING" if not no_ui else "INFO")
    sigterm_as_interrupt()
    console = Console(stderr=json_out)
    opts = DevOptions(
        hosts=hosts, attackers=attackers, workdir=workdir, bantime=bantime, netns=netns_opt, recidive=recidive
    )
    started = time.monotonic()
    failure: str | None = None
    fleet = DevFleet(opts)
    watcher: Watcher | None = None
    scenario: Scenario | None = None
    try:
        console.print("[bold]starting the dev fleet...[/bold]")
        fleet.start()
        for line in fleet.describe():
            console.print("  " + line)
        watcher = Watcher(fleet).start()
        console.print("waiting for every component to report in...")
        _wait_for_components(watcher, fleet, timeout=90)
        scenario = Scenario(fleet).start()
        deadline = started + duration if duration else None
        if no_ui:
            _show_lines(fleet, watcher, console, deadline)
        else:
            _show_live(fleet, watcher, scenario, console, started, deadline)
    except KeyboardInterrupt:
        console.print("stopping...")
    except (RuntimeError, TimeoutError, OSError) as exc:
        failure = str(exc)
    finally:
        if scenario is not None:
            scenario.stop()
        summary = watcher.summary(fleet, scenario, started) if watcher and scenario else None
        if watcher is not None:
            watcher.stop()
        fleet.close()
        console.print("stopped; namespaces, firewall rules, sets and processes removed")
    if json_out and summary is not None:
        typer.echo(json.dumps(summary, indent=2))
    if failure:
        raise fail(f"error: {failure}")


def _wait_for_components(watcher: Watcher, fleet: DevFleet, timeout: float) -> None:
    want = {("shipper", h.name) for h in fleet.hosts} | {("enforcer", h.name) for h in fleet.hosts}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_children(fleet)
        with watcher._lock:
            seen = {(role, host) for (role, host, _inst) in watcher.view.components}
        if want <= seen:
            return
        time.sleep(0.2)
    raise TimeoutError(f"components did not report in within {timeout:.0f}s: {sorted(want - seen)}")


def _check_children(fleet: DevFleet) -> None:
    dead = fleet.supervisor.dead()
    if dead:
        child = dead[0]
        raise RuntimeError(
            f"{child.name} exited ({child.proc.returncode if child.proc else '?'}); "
            f"last lines of {child.log_path}:\n{child.tail()}"
        )


def register(app: typer.Typer) -> None:
    app.command("dev")(dev)
