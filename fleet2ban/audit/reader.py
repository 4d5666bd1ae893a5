"""The thin Kafka side of the audit layer: what the CLI and the console ask, over the one reader.

Everything here hands decoded records to the pure side (:class:`FleetView`, :mod:`.queries`), reading
through :class:`fleet2ban.kafka.TopicReader` (every partition assigned, no group, time seeks with
``offsets_for_times``, the end by partition EOF).

- :func:`connect`: resolve the cluster, failing with one :class:`BrokerError` within ``timeout`` seconds.
- :func:`load_view`, :func:`load_coverage_view`, :func:`read_decisions`, :func:`read_target`,
  :func:`load_trail`: what the CLI asks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from fleet2ban.audit import digests
from fleet2ban.audit.partition import partition_for
from fleet2ban.audit.view import FleetView, TopicKind
from fleet2ban.contract import (
    BanState,
    ContractError,
    Decision,
    Heartbeat,
    Report,
    ban_key,
    decode_ban,
    decode_decision,
    decode_report,
    may_be_heartbeat,
    normalize_target,
    split_ban_key,
)
from fleet2ban.exceptions import BrokerError
from fleet2ban.identity import Verifier, check_report
from fleet2ban.kafka import Cluster, check_connection, resolve
from fleet2ban.kafka.reader import (
    Progress,
    Record,
    RecordSink,
    Source,
    TopicReader,
    partition_count,
    read_tail,
    record_time,
)
from fleet2ban.logs import RateLimitedLog
from fleet2ban.settings import KafkaSettings

log = logging.getLogger(__name__)
rlog = RateLimitedLog(log)

__all__ = [
    "Progress",
    "RecordSink",
    "Source",
    "TargetRecords",
    "TopicReader",
    "connect",
    "into_view",
    "iter_all",
    "load_coverage_view",
    "load_trail",
    "load_view",
    "partition_count",
    "read_decisions",
    "read_target",
    "record_time",
]

SEEK_SLACK = timedelta(minutes=5)
"""How far before a range's start the time seek goes: a decision's ``at`` may precede its record's
timestamp (event time, processor lag) by up to this much."""


def connect(settings: KafkaSettings, timeout: float = 5.0) -> Cluster:
    """The cluster, after checking that it answers: one clear :class:`BrokerError` within ``timeout``."""
    if not settings.bootstrap_servers:
        raise BrokerError(
            "no Kafka bootstrap configured: pass --bootstrap HOST:PORT, set kafka.bootstrap_servers "
            "or FLEET2BAN_KAFKA__BOOTSTRAP_SERVERS"
        )
    probe = resolve(settings)
    # one clear line within ``timeout``: unreachable, or (as soon as known) wrong credentials or a TLS
    # failure naming the setting
    check_connection(probe, timeout)
    return resolve(settings)


def _short(exc: BaseException) -> str:
    text = str(exc)
    if 'str="' in text:  # KafkaError{code=...,str="..."}
        text = text.split('str="', 1)[1].rstrip('"}')
    return text[:200]


def into_view(view: FleetView, reader: TopicReader | None = None) -> RecordSink:
    """The sink that folds records into ``view`` (a record that breaks the contract is counted, skipped).
    ``reader``: the reader feeding it, whose ``headers`` (``track_headers``) carry host signatures."""

    def feed(kind: str, key: bytes | None, value: bytes | None, ts: datetime | None) -> None:
        headers = None if reader is None else reader.headers
        if not view.add_raw(cast(TopicKind, kind), key, value, ts, headers):
            rlog.warning(
                "bad-" + kind, "skipped a %s record that breaks the contract: %s", kind, view.last_error
            )

    return feed


# ------------------------------------------------------------------------------------ CLI answers


def load_view(
    cluster: Cluster,
    now: datetime,
    *,
    reports_window: timedelta = timedelta(hours=1),
    progress: Progress | None = None,
    timeout: float = 120.0,
    max_lookback: timedelta = timedelta(days=7),
    bans: FleetView | None = None,
    verifier: Verifier | None = None,
) -> FleetView:
    """The fleet's state now: all of ``bans`` and the last ``reports_window`` of ``reports``.

    An enforcer with more bans than its heartbeat lists (``applied_total``) is known completely only
    from its reports since it started: when a live one started before the window, ``reports`` is read
    again from its ``started_at`` (bounded by ``max_lookback``), so coverage stays exact.
    ``bans``: a view that already holds all of ``bans`` (only ``reports`` is read then). ``verifier``:
    ``reports`` records whose host signature does not verify are dropped (``FleetView.rejected``).
    """
    since = now - reports_window
    view = _read_view(cluster, since, progress, timeout, bans, verifier)
    earliest = since
    for enf in view.live_enforcers(now):
        hb = enf.heartbeat
        if hb is None or hb.applied_total is None or hb.applied_total <= len(hb.applied):
            continue
        if hb.started_at is not None and hb.started_at < earliest:
            earliest = max(hb.started_at - timedelta(seconds=5), now - max_lookback)
    if earliest < since:
        log.info("reading reports from %s for enforcers with truncated heartbeats", earliest.isoformat())
        view = _read_view(cluster, earliest, progress, timeout, bans, verifier)
    return view


def _read_view(
    cluster: Cluster,
    since: datetime,
    progress: Progress | None,
    timeout: float,
    bans: FleetView | None = None,
    verifier: Verifier | None = None,
) -> FleetView:
    view = FleetView(verifier=verifier)
    t = cluster.topics
    sources = [Source("reports", t.reports, since=since)]
    if bans is None:
        sources.insert(0, Source("bans", t.bans))
    else:
        view.bans, view.lifted, view.ban_history = dict(bans.bans), dict(bans.lifted), dict(bans.ban_history)
        view.bans_seen, view.bad_records = bans.bans_seen, bans.bad_records
    with TopicReader(
        cluster, sources, lambda *_a: None, progress=progress, track_headers=verifier is not None
    ) as r:
        r.on_record = into_view(view, r)
        r.catch_up(timeout)
    return view


TAIL_SKEW = timedelta(seconds=60)
"""A tail read goes this much further back than the heartbeats need (clocks, producer delays)."""


def load_coverage_view(
    cluster: Cluster,
    now: datetime,
    *,
    reports_window: timedelta = timedelta(hours=1),
    heartbeat_interval_s: float = 5.0,
    progress: Progress | None = None,
    timeout: float = 120.0,
    max_lookback: timedelta = timedelta(days=7),
    verifier: Verifier | None = None,
) -> FleetView:
    """What ``bans list`` needs: all of ``bans`` and every live enforcer's coverage, with as little of
    ``reports`` as it can.

    ``reports`` is read backwards from its end until every live enforcer's latest heartbeat is found
    (heartbeats are periodic: the read goes back the silence bound of ``heartbeat_interval_s`` or of the
    heartbeats found, whichever is longer, plus :data:`TAIL_SKEW`; never past ``reports_window``). When
    every live enforcer's ``applied_digest`` matches the bans in force that :mod:`.digests` derives from
    ``bans`` before its ``bans_offsets``, its coverage is that set plus its reports after the heartbeat.
    Otherwise (a host missing a ban, an older enforcer) this is :func:`load_view`: the per-ban reports,
    slower, as exact. The view answers :func:`.queries.bans_in_force`; ``audit verify`` and ``status``
    need :func:`load_view`.
    """
    view = FleetView(verifier=verifier)
    floor_ms = int((now - reports_window).timestamp() * 1000)
    now_ms = int(now.timestamp() * 1000)
    base_s = view.silence_bound(Heartbeat(host="", role="enforcer", at=now, interval_s=heartbeat_interval_s))
    decode = _ReportDecoder(view, verifier)

    def back_to(records: list[Record]) -> int:
        need = base_s
        for rec in records:
            if may_be_heartbeat(rec.value):
                hb = decode(rec)
                if isinstance(hb, Heartbeat):
                    need = max(need, view.silence_bound(hb))
        return max(floor_ms, now_ms - int((need + TAIL_SKEW.total_seconds()) * 1000))

    tail = read_tail(
        cluster,
        cluster.topics.reports,
        back_to,
        timeout=timeout,
        progress=progress,
        headers=verifier is not None,
    )
    latest, enforcer_hb = _latest_heartbeats(tail, floor_ms, decode)
    live = {h: e for h, e in enforcer_hb.items() if not view.is_silent(e[0], now)}
    unchecked = sorted(h for h, (hb, _p, _o) in live.items() if not digests.can_check(hb))
    tracker = _read_bans(cluster, view, live, progress, timeout)

    def from_reports() -> FleetView:
        """The per-report answer (slower, always right), reusing the bans already read."""
        return load_view(
            cluster,
            now,
            reports_window=reports_window,
            progress=progress,
            timeout=timeout,
            max_lookback=max_lookback,
            bans=view,
            verifier=verifier,
        )

    if unchecked:
        log.info("enforcers without applied digests (%s): reading their reports", ", ".join(unchecked))
        return from_reports()
    covered = _digest_coverage(view, live, tracker)
    if covered is None:
        return from_reports()
    for hb in latest.values():
        view.add_report(hb)
    for host, (hb, hb_p, hb_off) in sorted(live.items()):
        digests.cover(view, hb, covered[host], _reports_after(tail, host, hb, hb_p, hb_off, decode))
    return view


LiveHeartbeat = tuple[Heartbeat, int, int]
"""An enforcer's latest heartbeat and where it is in ``reports`` (partition, offset)."""


class _ReportDecoder:
    """``reports`` records decoded once each (memo by position), broken and unverified ones counted in
    the view and answered as None."""

    def __init__(self, view: FleetView, verifier: Verifier | None) -> None:
        self.view = view
        self.verifier = verifier
        self._decoded: dict[tuple[int, int], Report | Heartbeat | None] = {}

    def __call__(self, rec: Record) -> Report | Heartbeat | None:
        pos = (rec.partition, rec.offset)
        if pos in self._decoded:
            return self._decoded[pos]
        view = self.view
        try:
            r: Report | Heartbeat | None = decode_report(rec.value)
        except ContractError as exc:
            view.bad_records += 1
            view.last_error = str(exc)
            r = None
        if r is not None and view.from_the_future(r.at):
            r = None  # as FleetView.add_report: a heartbeat dated ahead would keep a dead enforcer live
        if r is not None and not check_report(
            self.verifier,
            rec.key,
            rec.value,
            rec.headers,
            r.host,
            r.role if isinstance(r, Heartbeat) else None,
        ):
            view.rejected += 1
            r = None
        self._decoded[pos] = r
        return r


def _latest_heartbeats(
    tail: list[Record], floor_ms: int, decode: _ReportDecoder
) -> tuple[dict[tuple[str, str, str], Heartbeat], dict[str, LiveHeartbeat]]:
    """The latest heartbeat of every component in ``tail`` (not older than ``floor_ms``), and of every
    enforcer with its position."""
    latest: dict[tuple[str, str, str], Heartbeat] = {}
    enforcer_hb: dict[str, LiveHeartbeat] = {}
    for rec in tail:
        if (rec.ts_ms is not None and rec.ts_ms < floor_ms) or not may_be_heartbeat(rec.value):
            continue
        r = decode(rec)
        if not isinstance(r, Heartbeat):
            continue
        cid = (r.role, r.host, r.instance)
        if cid not in latest or latest[cid].at <= r.at:
            latest[cid] = r
        if r.role == "enforcer":
            prev = enforcer_hb.get(r.host)
            if prev is None or prev[0].at <= r.at:
                enforcer_hb[r.host] = (r, rec.partition, rec.offset)
    return latest, enforcer_hb


def _read_bans(
    cluster: Cluster,
    view: FleetView,
    live: dict[str, LiveHeartbeat],
    progress: Progress | None,
    timeout: float,
) -> digests.PrefixTracker:
    """All of ``bans`` into ``view``, remembering what each live enforcer's prefix of it held."""
    tracker = digests.PrefixTracker({h: dict(hb.bans_offsets or {}) for h, (hb, _p, _o) in live.items()})
    sources = [Source("bans", cluster.topics.bans)]
    with TopicReader(
        cluster, sources, lambda *_a: None, progress=progress, track_positions=bool(live)
    ) as reader:
        reader.on_record = _bans_with_prefixes(view, reader, tracker) if live else into_view(view)
        reader.catch_up(timeout)
    return tracker


def _digest_coverage(
    view: FleetView, live: dict[str, LiveHeartbeat], tracker: digests.PrefixTracker
) -> dict[str, list[str]] | None:
    """Each live enforcer's applied bans, when its ``applied_digest`` matches what ``bans`` says it
    should hold; None as soon as one does not (its reports must be read)."""
    memo: digests.Memo = {}
    covered: dict[str, list[str]] = {}
    for host, (hb, _p, _o) in sorted(live.items()):
        digest, keys = digests.in_force_digest(view.bans, tracker.overrides[host], hb.at, memo, host)
        if digest != hb.applied_digest:
            log.info("enforcer %s does not have every ban in force applied: reading the reports", host)
            return None
        covered[host] = keys
    return covered


def _reports_after(
    tail: list[Record], host: str, hb: Heartbeat, hb_p: int, hb_off: int, decode: _ReportDecoder
) -> list[Report]:
    """``host``'s reports in ``tail`` written after its heartbeat ``hb`` (at ``hb_p``/``hb_off``)."""
    after: list[Report] = []
    key = host.encode()
    for rec in tail:
        if rec.key is not None and rec.key != key:
            continue  # reports are keyed by their host
        if rec.partition == hb_p and rec.offset <= hb_off:
            continue
        r = decode(rec)
        if not isinstance(r, Report) or r.host != host:
            continue
        if (rec.partition == hb_p and rec.offset > hb_off) or (rec.partition != hb_p and r.at > hb.at):
            after.append(r)
    return after


def _bans_with_prefixes(view: FleetView, reader: TopicReader, tracker: digests.PrefixTracker) -> RecordSink:
    feed = into_view(view)

    def fold(kind: str, key: bytes | None, value: bytes | None, ts: datetime | None) -> None:
        p, off = reader.position
        if key is not None and tracker.past(p, off):
            try:
                k = ban_key(*split_ban_key(key))
            except ContractError:
                k = None
            if k is not None:
                tracker.before(p, off, k, view.bans.get(k))
        feed(kind, key, value, ts)

    return fold


def _collect_decisions(out: list[Decision], bad: list[int]) -> RecordSink:
    def feed(kind: str, key: bytes | None, value: bytes | None, ts: datetime | None) -> None:
        try:
            out.append(decode_decision(value))
        except ContractError as exc:
            bad[0] += 1
            rlog.warning("bad-decision", "skipped a decisions record that breaks the contract: %s", exc)

    return feed


def read_decisions(
    cluster: Cluster,
    since: datetime | None,
    until: datetime | None,
    *,
    slack: timedelta = SEEK_SLACK,
    partitions: tuple[int, ...] | None = None,
    value_contains: bytes | None = None,
    progress: Progress | None = None,
    timeout: float = 300.0,
) -> list[Decision]:
    """Decisions whose records were written in ``[since - slack, until + slack]`` (seek by time, not a
    scan from the start). Callers filter on the decision's own ``at`` (:func:`queries.decisions_in_range`)."""
    out: list[Decision] = []
    bad = [0]
    src = Source(
        "decisions",
        cluster.topics.decisions,
        since=since - slack if since else None,
        until=until + slack if until else None,
        partitions=partitions,
    )
    with TopicReader(
        cluster, [src], _collect_decisions(out, bad), progress=progress, value_contains=value_contains
    ) as r:
        r.catch_up(timeout)
    return out


@dataclass
class TargetRecords:
    decisions: list[Decision]
    reports: list[Report]
    bans: list[BanState]


def read_target(
    cluster: Cluster,
    target: str,
    now: datetime,
    *,
    jails: Iterable[str] = (),
    reports_window: timedelta = timedelta(hours=24),
    progress: Progress | None = None,
    verifier: Verifier | None = None,
) -> TargetRecords:
    """Everything about one target: its decisions (one partition: keyed by the target), its ``bans``
    values for the given jails and the jails in its decisions, and enforcer reports naming it since its
    first decision (at least ``reports_window`` back)."""
    t = normalize_target(target)
    topics = cluster.topics
    n = partition_count(cluster, topics.decisions)
    decisions = (
        read_decisions(
            cluster,
            None,
            None,
            partitions=(partition_for(t, n),),
            value_contains=t.encode(),
            progress=progress,
        )
        if n
        else []
    )
    decisions = [d for d in decisions if d.ip == t]
    jail_names = sorted({*jails, *(d.jail for d in decisions)})
    bans: dict[str, BanState | None] = {}
    nb = partition_count(cluster, topics.bans)
    if nb and jail_names:
        keys = {ban_key(j, t) for j in jail_names}

        def feed_ban(kind: str, key: bytes | None, value: bytes | None, ts: datetime | None) -> None:
            if key is None:
                return
            try:
                jail, ip = split_ban_key(key)
                k = ban_key(jail, ip)
                if k in keys:
                    bans[k] = None if value is None else decode_ban(value)
            except ContractError as exc:
                rlog.warning("bad-ban", "skipped a bans record that breaks the contract: %s", exc)

        parts = tuple(sorted({partition_for(k, nb) for k in keys}))
        with TopicReader(cluster, [Source("bans", topics.bans, partitions=parts)], feed_ban) as r:
            r.catch_up()
    since = now - reports_window
    if decisions:
        since = min(since, *(d.at for d in decisions))
    reports: list[Report] = []
    rr: TopicReader

    def feed_report(kind: str, key: bytes | None, value: bytes | None, ts: datetime | None) -> None:
        try:
            rec = decode_report(value)
        except ContractError as exc:
            rlog.warning("bad-report", "skipped a reports record that breaks the contract: %s", exc)
            return
        if (
            isinstance(rec, Report)
            and rec.ip == t
            and check_report(verifier, key, value, rr.headers, rec.host, None)
        ):
            reports.append(rec)

    src = Source("reports", topics.reports, since=since - SEEK_SLACK)
    with TopicReader(
        cluster,
        [src],
        feed_report,
        progress=progress,
        value_contains=t.encode(),
        track_headers=verifier is not None,
    ) as rr:
        rr.catch_up()
    return TargetRecords(decisions, reports, [b for b in bans.values() if b is not None])


def load_trail(
    cluster: Cluster,
    view: FleetView,
    now: datetime,
    window: timedelta,
    *,
    progress: Progress | None = None,
) -> list[Decision]:
    """The decisions ``audit verify`` needs: from the oldest ban the view refers to (or ``window`` back);
    the whole topic when a referenced decision is not found that way."""
    needed_ids = set(view.referenced)
    needed_keys: set[str] = {k for (_h, k) in view.unreferenced_applied}
    for e in view.enforcers.values():
        needed_keys.update(k for k, info in e.applied.items() if info.decision_id is None)
    starts = [now - window]
    for entry in view.bans.values():
        starts.append(entry.state.at)
    decisions = read_decisions(cluster, min(starts), None, progress=progress)
    have_ids = {d.id for d in decisions}
    have_keys = {ban_key(d.jail, d.ip) for d in decisions if d.action == "ban"}
    if needed_ids - have_ids or needed_keys - have_keys:
        log.info("some referenced decisions are older than the first seek: reading all decisions")
        decisions = read_decisions(cluster, None, None, progress=progress)
    return decisions


def iter_all(cluster: Cluster, kind: TopicKind, topic: str) -> Iterator[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of a topic from the beginning (small topics, tests)."""
    out: list[tuple[bytes | None, bytes | None]] = []
    with TopicReader(
        cluster, [Source(kind, topic)], lambda _k, key, value, _ts: out.append((key, value))
    ) as r:
        r.catch_up()
    yield from out
