"""The enforcer agent: follow ``bans``, reconcile the kernel with it, expire on its own clock, report.

Two layers:

- :class:`Enforcer` holds the active set (``(jail, target) -> BanState`` from the compacted ``bans``
  topic) and what it believes is in the kernel, and runs :meth:`Enforcer.reconcile`: the pure plan
  (:mod:`enforcer.plan`) applied through a backend in one batch, turned into ``reports`` records. It
  knows nothing of Kafka, so tests drive it directly.
- :class:`Agent` is the Kafka shell: it assigns every partition of ``bans`` from the beginning (no
  consumer group, no committed offsets), reads to the end (through :class:`fleet2ban.kafka.TopicReader`),
  reconciles in full, then follows the topic live, reconciling incrementally after
  each batch of records, at the next expiry (its own clock: a dead processor never makes a ban
  permanent) and in full every ``enforcer.reconcile_interval_s`` (a flushed chain, a deleted entry, a
  stray rule are put right). It writes reports and heartbeats to ``reports`` and serves metrics.
"""

from __future__ import annotations

import gc
import heapq
import json
import logging
import socket
import subprocess
import threading
import time
from collections import Counter as CounterDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from enforcer.backends.base import Backend
from enforcer.exceptions import BackendError
from enforcer.plan import (
    Changes,
    Desired,
    JailSpec,
    KernelEntry,
    Key,
    Rails,
    Refusal,
    Want,
    desired_one,
    desired_state,
    kernel_timeout,
    never_renews,
    plan,
)
from fleet2ban import __version__
from fleet2ban.allowlist import AllowList, entry_text
from fleet2ban.contract import (
    BanState,
    ContractError,
    Heartbeat,
    Report,
    ReportKind,
    applied_digest,
    ban_key,
    decode_ban,
    digest_item,
    encode,
    split_ban_key,
    utcnow,
)
from fleet2ban.exceptions import BrokerError
from fleet2ban.identity import Signer
from fleet2ban.kafka import Cluster, Source, TopicReader, admin_config, producer_config
from fleet2ban.kafka.reader import topic_partitions
from fleet2ban.logs import RateLimitedLog
from fleet2ban.settings import Settings

log = logging.getLogger(__name__)
rlog = RateLimitedLog(log)

HEARTBEAT_APPLIED_MAX = 1000
"""At most this many ``JAIL|IP`` keys are listed in a heartbeat."""

GC_THRESHOLDS = (20_000, 20, 20)
"""The agent's garbage-collector thresholds. A ban allocates about ten objects on its way in (record,
state, verdict, change, report), so CPython's default (700, 10, 10) ran a young collection every ~70
bans and rescanned every ban in force as the set grew: 10,000 bans arriving at once cost about a quarter
more. Nothing here builds cycles at that rate."""

# ------------------------------------------------------------------------------------------ metrics

ACTIVE = Gauge("fleet2ban_enforcer_active_bans", "bans in force in the kernel (as last reconciled)")
WANTED = Gauge("fleet2ban_enforcer_wanted_bans", "bans the active set says should be in force")
CAP_ALARM = Gauge(
    "fleet2ban_enforcer_cap_alarm", "1 when active bans exceed enforcer.alarm_ratio of max_bans"
)
SYNCED = Gauge("fleet2ban_enforcer_synced", "1 once the bans topic was read to its end")
APPLY_SECONDS = Histogram(
    "fleet2ban_enforcer_apply_batch_seconds",
    "time to apply one batch of changes to the kernel",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
DELAY_SECONDS = Histogram(
    "fleet2ban_enforcer_decision_to_applied_seconds",
    "from a ban's decision time to its entry in this host's kernel (live bans only)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
CORRECTIONS = Counter(
    "fleet2ban_enforcer_reconcile_corrections_total",
    "drift a full reconcile found and repaired",
    ["kind"],  # missing, stray, structure
)
ACTIONS = Counter("fleet2ban_enforcer_actions_total", "reports written, by kind", ["kind"])
_ACTION_BY_KIND: dict[str, Any] = {}
"""ACTIONS' child per kind (a ``labels()`` lookup takes a lock and a hash per report)."""
INVALID = Counter("fleet2ban_enforcer_invalid_records_total", "bans records that broke the contract")
RECONCILES = Counter("fleet2ban_enforcer_reconciles_total", "reconcile passes", ["mode", "outcome"])
BACKEND = Gauge("fleet2ban_enforcer_backend_gauge", "backend gauges (set fill ratios)", ["name"])


# ------------------------------------------------------------------------------------ the enforcer


@dataclass
class Outcome:
    """What one reconcile did."""

    changes: Changes
    failed: int = 0
    corrections: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    keys: int | None = None
    """How many bans an incremental pass evaluated; None when it computed the desired state of every ban."""


class Enforcer:
    """The active set, the kernel as last seen, and the reconcile that joins them. No Kafka.

    A reconcile without ``full`` is incremental: it costs O(changes), not O(bans in force). The desired
    state (:class:`Desired`) is kept between reconciles (``last_desired``) and re-evaluated only for the
    keys that may have changed: those :meth:`ingest` touched, those whose ban expired (a heap of expiry
    times with lazy deletion), those whose last change failed (tried again), and the few applied entries
    whose kernel timeout may need renewing before the ban expires (:func:`never_renews`). The cap is a
    rule over every ban, so while any ban is refused by it, or when the update would exceed it, the
    desired state of every ban is computed (still without re-reading the kernel); so it is when the rails
    or the jails changed, and after a reconcile that raised.
    """

    def __init__(
        self,
        backend: Backend,
        rails: Rails,
        jails: Sequence[JailSpec],
        host: str,
        clock: Callable[[], datetime] = utcnow,
        incremental: bool = True,
    ) -> None:
        self.backend = backend
        self.rails = rails
        self.jails = list(jails)
        self.host = host
        self.clock = clock
        self.bans: dict[Key, BanState] = {}
        self.applied: dict[Key, datetime | None] = {}
        """What is believed to be in the kernel: key -> when its kernel timeout runs out (None: never)."""
        self.outbox: list[Report] = []
        self.counters: CounterDict[str] = CounterDict()
        self.live = False
        """Set once the topic was read to its end: from then on decision-to-applied delays are observed."""
        self._reported: dict[Key, str] = {}
        self._refusals_reported: set[tuple[Key, str]] = set()
        self._failures_reported: set[tuple[Key, str]] = set()
        self._reconciled_once = False
        self.incremental = incremental
        """False: every reconcile computes the desired state of every ban (the reference behaviour)."""
        self.last_desired: Desired | None = None
        """The desired state as of the last reconcile (kept up to date by incremental ones; its ``expired``
        count is as of the last computation over every ban)."""
        self._digest_memo: dict[Key, tuple[datetime | None, int]] = {}
        self._dirty: set[Key] = set()
        """Keys :meth:`ingest` touched since the last reconcile."""
        self._retry: set[Key] = set()
        """Keys whose change failed at the last reconcile: tried again at the next."""
        self._watch: set[Key] = set()
        """Applied keys whose kernel timeout may need renewing before their ban expires."""
        self._expiries: list[tuple[datetime, Key]] = []
        """Heap of (expires_at, key) of the wanted bans; an entry is stale when the key's want has another
        expiry or there is none."""
        self.allow = AllowList()
        """The live allow-list (the ``allow`` topic): a rail, re-applied to every ban when it changes."""
        self._allow_seen = -1
        """``allow.version`` the kept desired state was computed with."""
        self._allow_until: datetime | None = None
        """When the next allow-list entry in force expires (the desired state of every ban is computed then)."""
        self._kept_for: tuple[Rails, frozenset[str]] | None = None
        """The rails and jails ``last_desired`` was computed with; None: recompute it in full."""
        self._cap_refused = 0

    # -- input

    def ingest(self, key: bytes | str | None, value: bytes | None) -> None:
        """Apply one ``bans`` record to the active set (a tombstone lifts the ban). Never raises."""
        try:
            if key is None:
                raise ContractError("bans record without a key")
            jail, target = split_ban_key(key)
        except ContractError as exc:
            self._invalid("?", "?", str(exc))
            return
        if value is None:
            self.bans.pop((jail, target), None)
            self._dirty.add((jail, target))
            self.counters["tombstones"] += 1
            return
        try:
            ban = decode_ban(value)
            if ban.jail != jail or ban.ip != target:  # both canonical (decode_ban, split_ban_key)
                raise ContractError(f"bans key {ban_key(jail, target)!r} does not match its value")
        except ContractError as exc:
            self._invalid(jail, target, str(exc))
            return
        self._dirty.add((jail, target))
        self.counters["records"] += 1
        if not ban.applies_on(self.host):  # a scoped ban (jail min_hosts) of other hosts: not ours
            self.bans.pop((jail, target), None)
            self.counters["out_of_scope"] += 1
            return
        self.bans[(jail, target)] = ban

    def ingest_allow(self, key: bytes | str | None, value: bytes | None) -> None:
        """Apply one ``allow`` record to the allow-list. Never raises."""
        try:
            _key, entry = self.allow.ingest(key, value)
        except ContractError as exc:
            INVALID.inc()
            self.counters["invalid_allow"] += 1
            rlog.warning("invalid-allow", "skipping an invalid allow record: %s", exc)
            return
        self.counters["allow_records"] += 1
        if entry is not None:
            log.info("allow-list: %s", entry_text(entry))

    def _invalid(self, jail: str, target: str, error: str) -> None:
        INVALID.inc()
        self.counters["invalid"] += 1
        rlog.warning("invalid", "skipping an invalid bans record: %s", error)
        self._report("skipped", jail, target, None, f"invalid record: {error}")

    # -- reports

    def _report(
        self,
        kind: ReportKind,
        jail: str,
        target: str,
        decision_id: str | None,
        detail: str | None,
        at: datetime | None = None,
    ) -> None:
        """Queue one report; ``at``: when it happened (a batch reads the clock once), default now."""
        child = _ACTION_BY_KIND.get(kind)
        if child is None:
            child = _ACTION_BY_KIND[kind] = ACTIONS.labels(kind)
        child.inc()
        self.counters[kind] += 1
        self.outbox.append(
            Report(
                host=self.host,
                kind=kind,
                jail=jail,
                ip=target,
                at=self.clock() if at is None else at,
                decision_id=decision_id,
                detail=detail,
                backend=self.backend.name,
            )
        )

    def take_reports(self) -> list[Report]:
        out, self.outbox = self.outbox, []
        return out

    def applied_digest(self, at: datetime) -> str:
        """:func:`fleet2ban.contract.applied_digest` of the bans in force at ``at`` (per the active set)
        that are applied: what a reader compares with the bans in force it derives from ``bans``."""
        memo = self._digest_memo
        items: list[int] = []
        for key in self.applied:
            ban = self.bans.get(key)
            if ban is None or not ban.active_at(at):
                continue
            cached = memo.get(key)
            if cached is None or cached[0] != ban.expires_at:
                cached = memo[key] = (ban.expires_at, digest_item(ban_key(*key), ban.expires_at))
            items.append(cached[1])
        if len(memo) > 2 * len(self.applied) + 1000:
            self._digest_memo = {k: v for k, v in memo.items() if k in self.applied}
        return applied_digest(items)

    # -- reconcile

    def due(self) -> datetime | None:
        """When the next ban in force expires (reconcile then, to lift it), or an allow-list entry does
        (reconcile then, to apply the bans it held back)."""
        if self.last_desired is None:
            return None
        ban_due = self._ban_due()
        allow_due = self._allow_until
        if ban_due is None or (allow_due is not None and allow_due < ban_due):
            return allow_due
        return ban_due

    def _ban_due(self) -> datetime | None:
        assert self.last_desired is not None
        wants, heap = self.last_desired.wants, self._expiries
        while heap:
            at, key = heap[0]
            want = wants.get(key)
            if want is not None and want.expires_at == at:
                return at
            heapq.heappop(heap)
        return None

    def _pop_due(self, now: datetime, wants: dict[Key, Want]) -> set[Key]:
        """The wanted keys whose ban expired by ``now`` (their heap entries are consumed)."""
        heap, out = self._expiries, set()
        while heap and heap[0][0] <= now:
            at, key = heapq.heappop(heap)
            want = wants.get(key)
            if want is not None and want.expires_at == at:
                out.add(key)
        return out

    def kernel_view(self, now: datetime, keys: Iterable[Key] | None = None) -> dict[Key, KernelEntry]:
        """What is believed to be in the kernel (only ``keys`` of it, when given)."""
        timeouts = self.backend.timeouts
        if keys is None:
            items: Iterable[tuple[Key, datetime | None]] = self.applied.items()
        else:
            applied = self.applied
            items = ((key, applied[key]) for key in keys if key in applied)
        return {
            key: KernelEntry(key[0], key[1], kernel_timeout(deadline, now) if timeouts else None)
            for key, deadline in items
        }

    def _recompute(self, now: datetime) -> Desired:
        """The desired state of every ban; the expiry heap rebuilt from it."""
        desired = desired_state(self.bans, now, self.rails, self.jails, self.allow)
        self._allow_seen = self.allow.version
        self._allow_until = self.allow.next_expiry(now)
        self.last_desired = desired
        self._cap_refused = sum(1 for r in desired.refused.values() if r.rule == "cap")
        self._rebuild_expiries(desired.wants)
        return desired

    def _rebuild_expiries(self, wants: dict[Key, Want]) -> None:
        self._expiries = [(w.expires_at, key) for key, w in wants.items() if w.expires_at is not None]
        heapq.heapify(self._expiries)

    def _update(self, kept: Desired, keys: set[Key], now: datetime, known: frozenset[str]) -> bool:
        """Re-evaluate ``keys`` into the kept desired state; False (nothing changed) when the cap is in
        play: the desired state of every ban must be computed instead."""
        if self._cap_refused:
            return False
        bans, rails, allow = self.bans, self.rails, self.allow
        verdicts = {key: desired_one(key, bans.get(key), now, rails, known, allow) for key in keys}
        wants, refused = kept.wants, kept.refused
        count = len(wants)
        for key, verdict in verdicts.items():
            count += isinstance(verdict, Want) - (key in wants)
        if count > rails.max_bans:
            return False
        heap = self._expiries
        for key, verdict in verdicts.items():
            old = wants.pop(key, None)
            refused.pop(key, None)
            if isinstance(verdict, Want):
                wants[key] = verdict
                at = verdict.expires_at
                if at is not None and (old is None or old.expires_at != at):
                    heapq.heappush(heap, (at, key))
            elif isinstance(verdict, Refusal):
                refused[key] = verdict
        kept.alarm = len(wants) > rails.alarm_at
        if len(heap) > 2 * len(wants) + 1024:  # stale entries of re-applied bans: start afresh
            self._rebuild_expiries(wants)
        return True

    def _removed(self, key: Key, now: datetime, desired: Desired, at: datetime | None = None) -> None:
        decision = self._reported.pop(key, None)
        if decision is None:
            return
        ban = self.bans.get(key)
        if ban is None:
            why = "lifted"
        elif not ban.active_at(now):
            why = "expired"
        else:
            refusal = desired.refused.get(key)
            why = f"refused: {refusal.detail}" if refusal else "no longer wanted"
        self._report("removed", key[0], key[1], decision, why, at)

    def reconcile(self, full: bool) -> Outcome:  # noqa: C901  # being split into rooms (core, agent, discovery, metrics) by the enforcer engineer, #19
        """Bring the kernel to the active set in one batch; with ``full``, re-read and repair the kernel
        first. Raises :class:`BackendError` when the backend cannot even list or repair."""
        started = time.perf_counter()
        now = self.clock()
        known = frozenset(j.name for j in self.jails)
        kept = self.last_desired
        keys: set[Key] | None = None  # the keys this pass evaluates; None: every key
        allow_fresh = self._allow_seen == self.allow.version and (
            self._allow_until is None or self._allow_until > now
        )
        if (
            self.incremental
            and not full
            and kept is not None
            and allow_fresh
            and self._kept_for == (self.rails, known)
        ):
            keys = self._dirty | self._retry | self._watch | self._pop_due(now, kept.wants)
            if not self._update(kept, keys, now, known):
                keys = None
        self._kept_for = None  # until this pass completes: one that raised leaves the kept state suspect
        self._dirty = set()
        self._retry = set()
        desired = self._recompute(now) if keys is None or kept is None else kept
        corrections: dict[str, int] = {}
        if full:
            structure = self.backend.ensure()
            kernel = self.backend.list()
            if self._reconciled_once:
                believed = set(self.applied)
                corrections = {
                    "structure": structure,
                    "missing": len((believed - set(kernel)) & set(desired.wants)),
                    "stray": len(set(kernel) - believed),
                }
                for kind, n in corrections.items():
                    if n:
                        CORRECTIONS.labels(kind).inc(n)
                        self.counters[f"corrections_{kind}"] += n
                if any(corrections.values()):
                    log.warning("reconcile found drift and repairs it: %s", corrections)
            else:
                # After a restart, bans already in the kernel (ipset timeouts survive us) count as applied.
                for key, want in desired.wants.items():
                    if key in kernel:
                        self._reported[key] = want.decision_id
            self._reconciled_once = True
            self._refusals_reported = {m for m in self._refusals_reported if m[0] in self.bans}
            self._failures_reported = {m for m in self._failures_reported if m[0] in self.bans}
            # Entries the kernel dropped by itself (ipset timeouts) that are no longer wanted: removed.
            for key in set(self.applied) - set(kernel) - set(desired.wants):
                self._removed(key, now, desired)
            self.applied = {
                key: None if e.timeout is None else now + timedelta(seconds=e.timeout)
                for key, e in kernel.items()
            }
        if keys is None:
            changes = plan(desired.wants, self.kernel_view(now), now, timeouts=self.backend.timeouts)
        else:
            wants = desired.wants
            subset = {key: wants[key] for key in keys if key in wants}
            changes = plan(subset, self.kernel_view(now, keys), now, timeouts=self.backend.timeouts)
        for add in changes.adds:
            self.backend.add(add)
        for delete in changes.deletes:
            self.backend.delete(delete)
        failures = self.backend.commit() if changes else []
        failed = {f.key: f.error for f in failures}
        self._retry = set(failed)
        if changes:
            APPLY_SECONDS.observe(time.perf_counter() - started)
        done = self.clock()  # every change of the batch reached the kernel at its commit
        for delete in changes.deletes:
            if delete.key in failed:
                continue
            self.applied.pop(delete.key, None)
            self._removed(delete.key, now, desired, done)
        for add in changes.adds:
            if add.key in failed:
                mark = (add.key, add.decision_id)
                if mark not in self._failures_reported:
                    self._failures_reported.add(mark)
                    self._report("failed", add.jail, add.target, add.decision_id, failed[add.key])
                rlog.error(
                    "apply", "could not apply %s in jail %s: %s", add.target, add.jail, failed[add.key]
                )
                continue
            self.applied[add.key] = None if add.timeout is None else now + timedelta(seconds=add.timeout)
            if self._reported.get(add.key) != add.decision_id:
                self._reported[add.key] = add.decision_id
                self._report("applied", add.jail, add.target, add.decision_id, None, done)
                ban = self.bans.get(add.key)
                if self.live and ban is not None:
                    DELAY_SECONDS.observe(max(0.0, (done - ban.at).total_seconds()))
        refused = desired.refused
        fresh: list[Refusal] = []
        for key in refused if keys is None else (k for k in keys if k in refused):
            refusal = refused[key]
            mark = (key, refusal.decision_id)
            if mark not in self._refusals_reported:
                self._refusals_reported.add(mark)
                fresh.append(refusal)
        for refusal in sorted(fresh, key=lambda r: (r.jail, r.target)):
            log.warning("refusing to ban %s in jail %s: %s", refusal.target, refusal.jail, refusal.detail)
            self._report("skipped", refusal.jail, refusal.target, refusal.decision_id, refusal.detail)
        self._track_renewals(desired.wants, keys)
        self._kept_for = (self.rails, known)
        ACTIVE.set(len(self.applied))
        WANTED.set(len(desired.wants))
        CAP_ALARM.set(1 if desired.alarm else 0)
        if desired.alarm:
            rlog.warning(
                "cap",
                "%d active bans exceed the alarm threshold of %d",
                len(desired.wants),
                self.rails.alarm_at,
            )
        RECONCILES.labels("full" if full else "incremental", "ok").inc()
        evaluated = None if keys is None else len(keys)
        return Outcome(changes, len(failures), corrections, time.perf_counter() - started, evaluated)

    def _track_renewals(self, wants: dict[Key, Want], keys: set[Key] | None) -> None:
        """Keep ``_watch``: the applied keys (of ``keys``, or all) that may need renewing before expiry."""
        if not self.backend.timeouts:
            self._watch = set()
            return
        applied, watch = self.applied, self._watch
        if keys is None:
            watch.clear()
        for key in wants if keys is None else keys:
            watch.discard(key)
            want = wants.get(key)
            if want is not None and key in applied and not never_renews(applied[key], want.expires_at):
                watch.add(key)


# ---------------------------------------------------------------------------------- host knowledge


def own_addresses() -> list[str]:
    """Every address configured on this host's (namespace's) interfaces."""
    try:
        out = subprocess.run(
            ["ip", "-j", "addr", "show"], capture_output=True, text=True, timeout=10, check=False
        )
        data = json.loads(out.stdout or "[]")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        data = []
    addrs = [a["local"] for link in data for a in link.get("addr_info", []) if "local" in a]
    if not addrs:
        try:
            addrs = [str(i[4][0]) for i in socket.getaddrinfo(socket.gethostname(), None)]
        except OSError:
            addrs = []
    return addrs


def broker_addresses(hostports: Iterable[str]) -> list[str]:
    """The addresses Kafka brokers' host names resolve to (``host:port`` items)."""
    out: list[str] = []
    for hp in hostports:
        host = hp.rsplit(":", 1)[0].strip("[]")
        try:
            out += [str(i[4][0]) for i in socket.getaddrinfo(host, None)]
        except OSError:
            rlog.warning(f"resolve-{host}", "cannot resolve Kafka broker %s", host)
    return list(dict.fromkeys(out))


# ------------------------------------------------------------------------------------------- agent


class Agent:
    """The Kafka shell around :class:`Enforcer`."""

    def __init__(self, settings: Settings, cluster: Cluster, backend: Backend) -> None:
        self.settings = settings
        self.cluster = cluster
        self.backend = backend
        self.jails = [JailSpec.from_settings(j) for j in settings.jails if j.enabled]
        self.host = settings.enforcer.host
        self.enforcer = Enforcer(backend, self._rails([]), self.jails, self.host)
        self.signer = Signer.from_settings(self.host, settings.identity)
        """Signs every reports record with this host's key (DESIGN §8), when it has one."""
        self.started_at = utcnow()
        self.synced = False
        self.lag = 0.0
        self._brokers: list[str] = [cluster.bootstrap]
        self._last_full_ok: float | None = None
        self._last_error: str | None = None
        self._ingested = 0
        self.stop_event = threading.Event()

    def _rails(self, extra_brokers: Sequence[str]) -> Rails:
        brokers = broker_addresses([*self.cluster.bootstrap.split(","), *extra_brokers])
        return Rails.build(self.settings.enforcer, self.settings.jails, own=own_addresses(), brokers=brokers)

    # -- health

    def health(self) -> tuple[bool, dict[str, Any]]:
        interval = self.settings.enforcer.reconcile_interval_s
        fresh = self._last_full_ok is not None and time.monotonic() - self._last_full_ok < 3 * interval + 30
        ok = self.synced and fresh
        return ok, {
            "synced": self.synced,
            "backend": self.backend.name,
            "active": len(self.enforcer.applied),
            "last_error": self._last_error,
        }

    # -- the loop

    def run(self) -> None:
        from confluent_kafka import Producer

        topics = self.cluster.topics
        gc.set_threshold(*GC_THRESHOLDS)
        producer = Producer(producer_config(self.cluster, linger_ms=5))
        reader: TopicReader | None = None
        try:
            parts = self._wait_for_partitions(topics.bans)
            if not parts:
                return
            extra = self._broker_addresses()
            self._brokers = list(dict.fromkeys([*self._brokers, *extra]))
            self.enforcer.rails = self._rails(extra)
            log.info(
                "enforcer on host %s: %s; following %s (%d partitions) from the beginning",
                self.host,
                self.backend.describe(),
                topics.bans,
                len(parts),
            )
            reader = TopicReader(
                self.cluster,
                [Source("bans", topics.bans), Source("allow", topics.allow)],
                self._ingest,
                track_positions=False,
            )
            sync_started = time.monotonic()
            interval = self.settings.enforcer.reconcile_interval_s
            hb_interval = self.settings.metrics.heartbeat_interval_s
            next_full = 0.0
            next_hb = 0.0
            while not self.stop_event.is_set():
                got = self._drain(reader)
                if not self.synced and reader.caught_up:
                    self.synced = True
                    SYNCED.set(1)
                    log.info(
                        "read %s to its end in %.2fs: %d bans in the active set",
                        topics.bans,
                        time.monotonic() - sync_started,
                        len(self.enforcer.bans),
                    )
                    next_full = 0.0
                if self.synced:
                    mono = time.monotonic()
                    due = self.enforcer.due()
                    if mono >= next_full:
                        if self._reconcile(full=True):
                            next_full = mono + interval
                            self.enforcer.live = True
                        else:
                            next_full = mono + min(interval, 2.0)
                    elif self.enforcer.live and (got or (due is not None and due <= utcnow())):
                        self._reconcile(full=False)
                    self._publish(producer, topics.reports)
                    if mono >= next_hb:
                        self._heartbeat(producer, topics.reports, reader, hb_interval)
                        next_hb = mono + hb_interval
                producer.poll(0)
        finally:
            self._publish(producer, topics.reports)
            producer.flush(5)
            if reader is not None:
                reader.close()

    def _broker_addresses(self) -> list[str]:
        """host:port of every broker of the cluster (never banned: the safety rails)."""
        from confluent_kafka.admin import AdminClient

        try:
            meta = AdminClient({**admin_config(self.cluster), "log_level": 0}).list_topics(timeout=10)
        except Exception as exc:
            rlog.warning(
                "brokers", "cannot list the Kafka brokers (%s): only the bootstrap is protected", exc
            )
            return []
        return [f"{b.host}:{b.port}" for b in meta.brokers.values()]

    def _wait_for_partitions(self, topic: str) -> list[int]:
        while not self.stop_event.is_set():
            try:
                parts = topic_partitions(self.cluster, topic)
                if parts:
                    return parts
                rlog.warning(
                    "no-topic", "topic %s does not exist yet; waiting (fleet2ban topics create)", topic
                )
            except BrokerError as exc:
                rlog.warning("no-kafka", "%s; retrying", exc)
            self.stop_event.wait(1.0)
        return []

    def _ingest(self, kind: str, key: bytes | None, value: bytes | None, _ts: object) -> None:
        if kind == "allow":
            self.enforcer.ingest_allow(key, value)
        else:
            self.enforcer.ingest(key, value)
        self._ingested += 1

    def _drain(self, reader: TopicReader) -> int:
        """Read what is available (one batch, up to a bound); return how many records were ingested.

        The reader returns at the first record with whatever the consumer already holds: waiting for
        more would delay every ban (records arrive a fetch response at a time, and a reconcile costs
        what changed)."""
        self._ingested = 0
        deadline = time.monotonic() + 0.25
        try:
            reader.poll(0.2, 5000)
            while self._ingested and time.monotonic() < deadline and self._ingested < 50_000:
                if not reader.poll(0, 5000):
                    break
        except BrokerError as exc:
            rlog.warning("consume", "reading bans: %s (retrying)", exc)
            self.stop_event.wait(1.0)
        return self._ingested

    def _reconcile(self, full: bool) -> bool:
        try:
            if full:
                self.enforcer.rails = self._rails(self._brokers[1:])
            outcome = self.enforcer.reconcile(full)
        except Exception as exc:  # a backend or kernel error: never fatal, the next pass retries
            RECONCILES.labels("full" if full else "incremental", "error").inc()
            self._last_error = f"{type(exc).__name__}: {exc}"
            rlog.error("reconcile", "reconcile failed (retrying): %s", self._last_error)
            log.debug("reconcile failure", exc_info=True)
            return False
        if outcome.changes:
            log.info(
                "%s reconcile: +%d -%d (%d failed) in %.3fs",
                "full" if full else "incremental",
                len(outcome.changes.adds),
                len(outcome.changes.deletes),
                outcome.failed,
                outcome.seconds,
            )
        if full:
            self._last_full_ok = time.monotonic()
            self._last_error = None
            try:
                for name, value in self.backend.metrics().items():
                    BACKEND.labels(name).set(value)
            except BackendError as exc:
                rlog.warning("metrics", "backend metrics: %s", exc)
        return True

    def _publish(self, producer: Any, topic: str) -> None:
        for report in self.enforcer.take_reports():
            self._produce(producer, topic, encode(report))

    def _produce(self, producer: Any, topic: str, value: bytes) -> None:
        key = self.host.encode()
        headers = None if self.signer is None else self.signer.headers("reports", key, value)
        for _ in range(3):
            try:
                producer.produce(topic, key=key, value=value, headers=headers)
                return
            except BufferError:
                producer.poll(0.5)
        rlog.error("produce", "reports queue full: a report was dropped")

    def _heartbeat(self, producer: Any, topic: str, reader: TopicReader, interval: float) -> None:
        self.lag = float(reader.behind())
        keys = sorted(ban_key(j, t) for j, t in self.enforcer.applied)
        counters: dict[str, float] = {k: float(v) for k, v in self.enforcer.counters.items()}
        counters["active"] = float(len(self.enforcer.applied))
        counters["active_set"] = float(len(self.enforcer.bans))
        at = utcnow()
        # every bans record read so far is reconciled by now (the loop reconciles before it beats)
        positions = reader.positions()
        bans_topic = self.cluster.topics.bans
        offsets = {p: off for (t, p), off in positions.items() if t == bans_topic} if positions else None
        hb = Heartbeat(
            host=self.host,
            role="enforcer",
            at=at,
            instance=self.backend.name,
            version=__version__,
            started_at=self.started_at,
            interval_s=interval,
            lag=self.lag,
            counters=counters,
            applied=keys[:HEARTBEAT_APPLIED_MAX],
            applied_total=len(keys) if len(keys) > HEARTBEAT_APPLIED_MAX else None,
            applied_digest=self.enforcer.applied_digest(at) if offsets is not None else None,
            bans_offsets=offsets,
        )
        self._produce(producer, topic, encode(hb))
