"""``fleet2ban processor`` (the Faust worker), ``fleet2ban replay`` (the same core over log files, offline)
and ``fleet2ban import-fail2ban`` (a fail2ban jail as fleet2ban settings).

``replay`` is the shell that composes the shipper's parser with the processor's policy; neither package
imports the other.
"""

from __future__ import annotations

import heapq
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import typer
from pydantic import ValidationError

from fleet2ban.cli.common import (
    EXIT_USAGE,
    cluster_for,
    fail,
    handle_errors,
    settings_for,
    sigterm_as_interrupt,
)
from fleet2ban.contract import Event
from fleet2ban.exceptions import ConfigError
from fleet2ban.safetext import json_safe, printable
from fleet2ban.settings import JailSettings, Settings, format_validation_error, to_yaml

if TYPE_CHECKING:
    from processor.policy import Output

_json = msgspec.json.Encoder()


def _host_and_path(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    if sep and name and path:
        return name, Path(path)
    p = Path(spec)
    return p.stem, p


def _jails_with(settings: Settings, **changes: float | int | None) -> list[JailSettings]:
    """The configured jails with ``--maxretry``/``--findtime``/``--bantime`` applied, validated as the
    settings file's values are (a bad one is a ConfigError naming it: exit 2, one line). They apply to
    the jails that count events, not to those counting bans (``source: bans``, fail2ban's recidive)."""
    update = {k: v for k, v in changes.items() if v is not None}
    if not update:
        return list(settings.jails)
    try:
        return [
            JailSettings.model_validate({**j.model_dump(), **update}) if j.source == "events" else j
            for j in settings.jails
        ]
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, head="")) from None


def _by_jail(per_jail: dict[str, int]) -> str:
    """`` (amps=3,recidive=1)`` when bans came from more than one jail, else nothing."""
    if len(per_jail) < 2:
        return ""
    return " (" + ",".join(f"{j}={n}" for j, n in sorted(per_jail.items())) + ")"


@dataclass
class _Tally:
    """Writes each decision of a replay as a JSON line and counts them for the summary."""

    write: Callable[[str], object]
    bans: int = 0
    unbans: int = 0
    banned: set[str] = field(default_factory=set)
    per_jail: dict[str, int] = field(default_factory=dict)

    def emit(self, outputs: Iterable[Output]) -> None:
        for o in outputs:
            d = o.decision
            self.write(_json.encode(d).decode())
            self.write("\n")
            if d.action == "ban":
                self.bans += 1
                self.banned.add(d.ip)
                self.per_jail[d.jail] = self.per_jail.get(d.jail, 0) + 1
            else:
                self.unbans += 1


@handle_errors
def replay(
    ctx: typer.Context,
    files: list[str] = typer.Argument(
        ..., help="log files, one per host: PATH (host = file stem) or NAME=PATH"
    ),
    maxretry: int = typer.Option(None, "--maxretry", help="jails[*].maxretry (jails counting events)"),
    findtime: float = typer.Option(
        None, "--findtime", help="jails[*].findtime (seconds; jails counting events)"
    ),
    bantime: float = typer.Option(
        None, "--bantime", help="jails[*].bantime (seconds; negative = permanent; jails counting events)"
    ),
    lateness: float = typer.Option(None, "--lateness", help="processor.lateness_s"),
    config: Path = typer.Option(None, "--config", help="YAML settings file (instead of the global --config)"),
    filter_path: Path = typer.Option(
        None, "--filter", help="shipper.filter_path: a fail2ban filter file instead of the built-in parser"
    ),
    expire_all: bool = typer.Option(
        False, "--expire-all", help="after the last line, also print the unbans of bans still in force"
    ),
) -> None:
    """Run the processor's ban logic over AMPS log files offline; print one JSON decision per line.

    Files are merged in event-time order (each file is one host). A summary goes to stderr. Jails with
    ``source: bans`` (repeat offenders, fail2ban's recidive) count the bans the other jails decide here.
    """
    from processor.engine import Engine
    from processor.policy import Policy
    from shipper.parse import ParseStats, iter_file_events

    if config is not None:
        from fleet2ban.cli.common import global_options

        global_options(ctx).config = config
    settings = settings_for(ctx, **{"processor.lateness_s": lateness, "shipper.filter_path": filter_path})
    jails = _jails_with(settings, maxretry=maxretry, findtime=findtime, bantime=bantime)
    # the same rails as the processor and the enforcers; event time bounded by this machine's clock
    policy = Policy.from_settings(
        jails,
        settings.processor.lateness_s,
        enforcer=settings.enforcer,
        max_future_s=settings.processor.max_future_s,
    )
    sources = [_host_and_path(f) for f in files]
    for _, path in sources:
        if not path.is_file():
            raise fail(f"no such file: {path}", EXIT_USAGE)
    parser = None
    if settings.shipper.filter_path is not None:
        from shipper.f2bfilter import load_filter

        parser = load_filter(settings.shipper.filter_path)
    stats = ParseStats()

    def events(host: str, path: Path) -> Iterator[Event]:
        if parser is None:
            return iter_file_events(path, host, stats=stats)
        return iter_file_events(path, host, stats=stats, parser=parser)

    merged = heapq.merge(*(events(h, p) for h, p in sources), key=lambda e: e.ts)
    engine = Engine(policy)
    out: list[Output] = []
    buffer = sys.stdout.buffer

    tally = _Tally(lambda text: buffer.write(json_safe(text.encode())))
    started = time.perf_counter()
    for ev in merged:
        engine.feed((ev,), out)
        if out:
            tally.emit(out)
            out.clear()
    if expire_all:
        tally.emit(engine.advance(float("inf")))
    buffer.flush()
    elapsed = time.perf_counter() - started
    c = policy.counters
    typer.echo(
        f"replay: {len(sources)} file(s), {stats.summary()}; "
        f"bans={tally.bans}{_by_jail(tally.per_jail)} unbans={tally.unbans} banned_ips={len(tally.banned)} "
        f"failures={c.failures} duplicates={c.duplicates} late={c.late} evidence={c.evidence} "
        f"ignored={c.ignored} not_failure={c.not_failure} refused={c.refused} future={c.future}; "
        f"{elapsed:.2f}s",
        err=True,
    )
    for host, n in sorted(c.future_hosts.items()):
        typer.echo(
            f"replay: {n} failure(s) from {printable(host)} dated more than processor.max_future_s "
            "ahead of this machine's clock were not counted",
            err=True,
        )


@handle_errors
def processor(
    ctx: typer.Context,
    store: str = typer.Option(None, "--store", help="processor.store: memory:// or rocksdb://"),
    app_id: str = typer.Option(None, "--app-id", help="processor.app_id (the consumer group)"),
    metrics_port: int = typer.Option(None, "--metrics-port", help="metrics.port (0 = off)"),
    lateness: float = typer.Option(None, "--lateness", help="processor.lateness_s"),
) -> None:
    """Run the processor: a Faust worker that decides bans fleet-wide (until Ctrl-C/SIGTERM).

    Run one per core; workers of the same app id share the events' partitions.
    """
    from processor.app import run_worker

    settings = settings_for(
        ctx,
        **{
            "processor.store": store,
            "processor.app_id": app_id,
            "metrics.port": metrics_port,
            "processor.lateness_s": lateness,
        },
    )
    sigterm_as_interrupt()
    with cluster_for(settings, wait=True, uses=("events", "decisions", "bans")) as cluster:
        run_worker(settings, cluster)


@handle_errors
def import_fail2ban(
    ctx: typer.Context,
    jail_file: Path = typer.Argument(..., help="a fail2ban jail.conf / jail.local / jail.d/*.conf file"),
    jail: str = typer.Option(None, "--jail", help="the jail section (default: the only enabled one)"),
    filter_dir: Path = typer.Option(
        None, "--filter-dir", help="where the jail's filter lives (default: filter.d next to the jail file)"
    ),
) -> None:
    """Turn a fail2ban jail (and its filter) into fleet2ban settings: YAML on stdout, notes on stderr."""
    from processor.import_f2b import import_jail

    settings_for(ctx)
    result = import_jail(jail_file, jail, filter_dir)
    typer.echo(to_yaml(result.settings), nl=False)
    for note in result.notes:
        typer.echo(f"# not carried over: {note}", err=True)


def register(app: typer.Typer) -> None:
    app.command("replay")(replay)
    app.command("processor")(processor)
    app.command("import-fail2ban")(import_fail2ban)
