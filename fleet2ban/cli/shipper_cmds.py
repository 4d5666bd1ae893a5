"""``fleet2ban shipper`` (follow an AMPS log, ship its events) and ``fleet2ban parse`` (offline)."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import BinaryIO

import msgspec
import typer

from fleet2ban.cli.common import (
    EXIT_USAGE,
    cluster_for,
    fail,
    handle_errors,
    settings_for,
    sigterm_as_interrupt,
)
from fleet2ban.metrics import serve_metrics
from fleet2ban.safetext import json_safe
from shipper.parse import Parser, ParseStats, iter_file_event_lists, parse_line, write_file_json

log = logging.getLogger("fleet2ban.shipper")


def _parser(filter_path: Path | None) -> Parser:
    if filter_path is None:
        return parse_line
    from shipper.f2bfilter import load_filter

    return load_filter(filter_path)


@handle_errors
def shipper(
    ctx: typer.Context,
    log_path: Path = typer.Option(None, "--log", help="shipper.log_path: the AMPS ban log to follow"),
    host: str = typer.Option(None, "--host", help="shipper.host: this host's name in events"),
    instance: str = typer.Option(None, "--instance", help="shipper.instance: the AMPS instance name"),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="shipper.checkpoint_path"),
    from_start: bool = typer.Option(
        None, "--from-start/--from-end", help="shipper.from_start: without a checkpoint, read the whole file"
    ),
    filter_path: Path = typer.Option(
        None, "--filter", help="shipper.filter_path: a fail2ban filter file instead of the built-in parser"
    ),
    metrics_port: int = typer.Option(None, "--metrics-port", help="metrics.port (0 = off)"),
    poll: bool = typer.Option(False, "--poll", help="poll the file instead of using inotify"),
) -> None:
    """Follow an AMPS ban log and ship its 07-0013 events to Kafka (until Ctrl-C/SIGTERM)."""
    from shipper.ship import Shipper

    settings = settings_for(
        ctx,
        **{
            "shipper.log_path": log_path,
            "shipper.host": host,
            "shipper.instance": instance,
            "shipper.checkpoint_path": checkpoint,
            "shipper.from_start": from_start,
            "shipper.filter_path": filter_path,
            "metrics.port": metrics_port,
        },
    )
    if settings.shipper.log_path is None:
        raise fail("no log to follow: pass --log PATH (or set shipper.log_path)", EXIT_USAGE)
    parser = _parser(settings.shipper.filter_path)
    sigterm_as_interrupt()
    stop = threading.Event()
    with cluster_for(settings, wait=True, uses=("events", "reports")) as cluster:
        ship = Shipper(settings, cluster, parser=parser, use_inotify=not poll)
        server = serve_metrics(settings.metrics.port, settings.metrics.bind, ship.health)
        try:
            ship.run(stop)
        except KeyboardInterrupt:
            stop.set()
        finally:
            if server is not None:
                server.stop()


@handle_errors
def parse(
    ctx: typer.Context,
    files: list[Path] = typer.Argument(..., help="AMPS log files"),
    filter_path: Path = typer.Option(None, "--filter", help="a fail2ban filter file (failregex with <HOST>)"),
    host: str = typer.Option(None, "--host", help="host name in the events (default: this host)"),
    instance: str = typer.Option("", "--instance", help="AMPS instance name in the events"),
) -> None:
    """Print one JSON object per 07-0013 event (the wire Event) on stdout; a summary on stderr.

    Exit 0 on readable files, whatever they contain; 2 when a file is missing or unreadable.
    """
    settings_for(ctx)
    for f in files:
        if not f.is_file() or not os.access(f, os.R_OK):
            raise fail(
                f"cannot read {f}: {'no such file' if not f.exists() else 'not a readable file'}", EXIT_USAGE
            )
    parser = _parser(filter_path)
    name = host or socket.gethostname()
    out = _SafeJson(sys.stdout.buffer)
    encoder = msgspec.json.Encoder()
    total = ParseStats()
    for f in files:
        stats = ParseStats()
        try:
            if parser is parse_line:  # the same bytes as below, faster (shipper.parse.write_file_json)
                write_file_json(f, name, out, instance, stats)
            else:
                for events in iter_file_event_lists(f, name, instance, stats, parser=parser):
                    out.write(encoder.encode_lines(events))
        except OSError as exc:
            raise fail(f"cannot read {f}: {exc}", EXIT_USAGE) from None
        if len(files) > 1:
            typer.echo(f"{f}: {stats.summary()}", err=True)
        total.lines += stats.lines
        total.events += stats.events
        total.liveness += stats.liveness
        total.rejected.update(stats.rejected)
    out.flush()
    typer.echo(("total: " if len(files) > 1 else "") + total.summary(), err=True)


class _SafeJson:
    """Standard output for JSON lines, with what a terminal would act on escaped (:func:`json_safe`)."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw

    def write(self, data: bytes) -> int:
        return self.raw.write(json_safe(data))

    def flush(self) -> None:
        self.raw.flush()


def register(app: typer.Typer) -> None:
    app.command("shipper")(shipper)
    app.command("parse")(parse)
