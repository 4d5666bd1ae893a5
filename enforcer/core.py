"""The enforcer's core: the active set, the kernel as last seen, and the reconcile that joins them.

:class:`Enforcer` holds the active set (``(jail, target) -> BanState`` from the compacted ``bans``
topic) and what it believes is in the kernel, and runs :meth:`Enforcer.reconcile`: the pure plan
(:mod:`enforcer.plan`) applied through a backend in one batch, turned into ``reports`` records. It
knows nothing of Kafka (:mod:`enforcer.agent` is the Kafka shell around it), so tests drive it directly.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as CounterDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from enforcer.backends.base import Backend, Failure
from enforcer.metrics import (
    ACTIVE,
    APPLY_SECONDS,
    CAP_ALARM,
    CORRECTIONS,
    DELAY_SECONDS,
    INVALID,
    RECONCILES,
    WANTED,
    action,
    observe_many,
)
from enforcer.plan import (
    Changes,
    Desired,
    JailSpec,
    KeptDesired,
    KernelEntry,
    Key,
    Rails,
    Refusal,
    Want,
    desired_state,
    kernel_timeout,
    never_renews,
    plan,
)
from fleet2ban.allowlist import AllowList, entry_text
from fleet2ban.contract import (
    BanState,
    ContractError,
    Report,
    ReportKind,
    applied_digest,
    ban_key,
    decode_ban,
    digest_item,
    split_ban_key,
    utcnow,
)
from fleet2ban.logs import RateLimitedLog

log = logging.getLogger(__name__)
rlog = RateLimitedLog(log)


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
        self._unmetered: CounterDict[str] = CounterDict()
        """Reports queued and not yet counted in the actions metric (:meth:`_meter`)."""
        self.live = False
        """Set once the topic was read to its end: from then on decision-to-applied delays are observed."""
        self._reported: dict[Key, str] = {}
        self._refusals_reported: set[tuple[Key, str]] = set()
        self._failures_reported: set[tuple[Key, str]] = set()
        self._reconciled_once = False
        self.incremental = incremental
        """False: every reconcile computes the desired state of every ban (the reference behaviour)."""
        self.kept: KeptDesired | None = None
        """The desired state as of the last reconcile (kept up to date by incremental ones; its ``expired``
        count is as of the last computation over every ban), with its expiry heap."""
        self._digest_memo: dict[Key, tuple[datetime | None, int]] = {}
        self._dirty: set[Key] = set()
        """Keys :meth:`ingest` touched since the last reconcile."""
        self._retry: set[Key] = set()
        """Keys whose change failed at the last reconcile: tried again at the next."""
        self._watch: set[Key] = set()
        """Applied keys whose kernel timeout may need renewing before their ban expires."""
        self.allow = AllowList()
        """The live allow-list (the ``allow`` topic): a rail, re-applied to every ban when it changes."""
        self._allow_seen = -1
        """``allow.version`` the kept desired state was computed with."""
        self._allow_until: datetime | None = None
        """When the next allow-list entry in force expires (the desired state of every ban is computed then)."""
        self._kept_for: tuple[Rails, frozenset[str]] | None = None
        """The rails and jails ``last_desired`` was computed with; None: recompute it in full."""

    @property
    def last_desired(self) -> Desired | None:
        """The desired state as of the last reconcile (None before the first)."""
        return None if self.kept is None else self.kept.desired

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
        self._meter()

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
        """Queue one report; ``at``: when it happened (a batch reads the clock once), default now. The
        actions metric is brought up to date once per batch (:meth:`_meter`)."""
        self.counters[kind] += 1
        self._unmetered[kind] += 1
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

    def _meter(self) -> None:
        """Count the reports queued since the last call in the actions metric (one increment per kind)."""
        for kind, n in self._unmetered.items():
            action(kind).inc(n)
        self._unmetered.clear()

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
        if self.kept is None:
            return None
        ban_due = self.kept.due()
        allow_due = self._allow_until
        if ban_due is None or (allow_due is not None and allow_due < ban_due):
            return allow_due
        return ban_due

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
        """The desired state of every ban, kept (with its expiry heap) for the incremental passes."""
        desired = desired_state(self.bans, now, self.rails, self.jails, self.allow)
        self._allow_seen = self.allow.version
        self._allow_until = self.allow.next_expiry(now)
        self.kept = KeptDesired(desired)
        return desired

    def _incremental_keys(self, full: bool, now: datetime, known: frozenset[str]) -> set[Key] | None:
        """The keys an incremental pass evaluates (the kept desired state updated for them), or None: the
        desired state of every ban must be computed (a full pass, nothing kept, the allow-list, rails or
        jails changed, or the cap is in play)."""
        kept = self.kept
        allow_fresh = self._allow_seen == self.allow.version and (
            self._allow_until is None or self._allow_until > now
        )
        if not (
            self.incremental
            and not full
            and kept is not None
            and allow_fresh
            and self._kept_for == (self.rails, known)
        ):
            return None
        keys = self._dirty | self._retry | self._watch | kept.pop_due(now)
        if not kept.update(keys, self.bans, now, self.rails, known, self.allow):
            return None
        return keys

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

    def reconcile(self, full: bool) -> Outcome:
        """Bring the kernel to the active set in one batch; with ``full``, re-read and repair the kernel
        first. Raises :class:`BackendError` when the backend cannot even list or repair."""
        started = time.perf_counter()
        now = self.clock()
        known = frozenset(j.name for j in self.jails)
        keys = self._incremental_keys(full, now, known)  # the keys this pass evaluates; None: every key
        self._kept_for = None  # until this pass completes: one that raised leaves the kept state suspect
        self._dirty = set()
        self._retry = set()
        desired = self._recompute(now) if keys is None or self.kept is None else self.kept.desired
        corrections = self._resync(now, desired) if full else {}
        changes = self._plan(desired, now, keys)
        failures = self._apply(changes, started)
        failed = {f.key: f.error for f in failures}
        self._retry = set(failed)
        done = self.clock()  # every change of the batch reached the kernel at its commit
        self._record(changes, failed, now, desired, done)
        self._report_refusals(desired.refused, keys)
        self._track_renewals(desired.wants, keys)
        self._kept_for = (self.rails, known)
        self._meter()
        self._observe(desired, full)
        evaluated = None if keys is None else len(keys)
        return Outcome(changes, len(failures), corrections, time.perf_counter() - started, evaluated)

    def _resync(self, now: datetime, desired: Desired) -> dict[str, int]:
        """A full pass's first step: repair the kernel's structure, re-read it, count the drift from what
        was believed (the corrections), and take what it holds as applied."""
        structure = self.backend.ensure()
        kernel = self.backend.list()
        corrections: dict[str, int] = {}
        if self._reconciled_once:
            corrections = self._drift(structure, kernel, desired)
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
        return corrections

    def _drift(self, structure: int, kernel: dict[Key, KernelEntry], desired: Desired) -> dict[str, int]:
        """How far the kernel drifted from what was believed: counted, and logged when any."""
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
        return corrections

    def _plan(self, desired: Desired, now: datetime, keys: set[Key] | None) -> Changes:
        """What to change: over every key, or over ``keys`` only (wants and kernel restricted alike)."""
        if keys is None:
            return plan(desired.wants, self.kernel_view(now), now, timeouts=self.backend.timeouts)
        wants = desired.wants
        subset = {key: wants[key] for key in keys if key in wants}
        return plan(subset, self.kernel_view(now, keys), now, timeouts=self.backend.timeouts)

    def _apply(self, changes: Changes, started: float) -> list[Failure]:
        """Stage every change and commit them in one batch; the changes the kernel refused."""
        for add in changes.adds:
            self.backend.add(add)
        for delete in changes.deletes:
            self.backend.delete(delete)
        failures = self.backend.commit() if changes else []
        if changes:
            APPLY_SECONDS.observe(time.perf_counter() - started)
        return failures

    def _record(
        self, changes: Changes, failed: dict[Key, str], now: datetime, desired: Desired, done: datetime
    ) -> None:
        """Bring ``applied`` up to the committed batch and report it (``done``: when it was committed)."""
        for delete in changes.deletes:
            if delete.key in failed:
                continue
            self.applied.pop(delete.key, None)
            self._removed(delete.key, now, desired, done)
        applied, reported, bans, live = self.applied, self._reported, self.bans, self.live
        deadlines: dict[int, datetime] = {}  # kernel deadline per timeout: a burst shares a few
        delays: list[float] = []
        for add in changes.adds:
            key = add.key
            if failed and key in failed:
                mark = (key, add.decision_id)
                if mark not in self._failures_reported:
                    self._failures_reported.add(mark)
                    self._report("failed", add.jail, add.target, add.decision_id, failed[key])
                rlog.error("apply", "could not apply %s in jail %s: %s", add.target, add.jail, failed[key])
                continue
            timeout = add.timeout
            if timeout is None:
                applied[key] = None
            else:
                deadline = deadlines.get(timeout)
                if deadline is None:
                    deadline = deadlines[timeout] = now + timedelta(seconds=timeout)
                applied[key] = deadline
            if reported.get(key) != add.decision_id:
                reported[key] = add.decision_id
                self._report("applied", add.jail, add.target, add.decision_id, None, done)
                ban = bans.get(key)
                if live and ban is not None:
                    delays.append(max(0.0, (done - ban.at).total_seconds()))
        observe_many(DELAY_SECONDS, delays)

    def _report_refusals(self, refused: dict[Key, Refusal], keys: set[Key] | None) -> None:
        """Report each refusal (of ``keys``, or all) once per decision, in (jail, target) order."""
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

    def _observe(self, desired: Desired, full: bool) -> None:
        """The gauges and the pass counter after a pass; the cap alarm logged."""
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
