"""One driver of the jail core (``processor.policy``) over a store of target states (:class:`Driver`), and
the worker's: ``events``, ``decisions`` and ``allow`` records and the wall clock (:class:`Processor`),
over a :class:`StateStore` of durable state. No Faust here: ``processor.app`` gives the Processor a Faust
table, tests and tools a plain dict; ``processor.engine.Engine`` (replay, benchmarks) is the same driver
over a dict of states on the events' own clock.

The failure windows of every target live in memory (``Processor.live``), rebuilt from the events topic
after an assignment (``processor.rebalance``); only what the events cannot give back (bans, ban counts,
floors, the windows of ``source: bans`` jails: ``processor.policy.durable_part``) is written to the
store, and only when it changes.
"""

from __future__ import annotations

import heapq
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Protocol, runtime_checkable

from fleet2ban.allowlist import AllowList
from fleet2ban.contract import (
    PARTITION_CACHE_MAX,
    AllowEntry,
    ContractError,
    Decision,
    Event,
    EventsPartitions,
    decode_decision,
    decode_events,
    from_epoch,
    normalize_target,
    target_network,
)
from fleet2ban.identity import Headers, Verifier
from fleet2ban.logs import RateLimitedLog
from processor import metrics as m
from processor.policy import (
    NEG_INF,
    Output,
    Policy,
    TargetState,
    decode_state,
    durable_part,
    encode_state,
)

log = logging.getLogger("fleet2ban.processor")
_event_time = attrgetter("ts")
rlog = RateLimitedLog(log)

MAX_RECORD_BYTES = 4 * 1024 * 1024


@runtime_checkable
class StateStore(Protocol):
    """Where the durable part of each target's state is kept: the target's text (UTF-8) -> its encoded
    durable state (``processor.policy.encode_state``). A Faust table (changelogged, one partition per
    events partition) in the worker; a plain ``dict[bytes, bytes]`` in tests and tools."""

    def get(self, key: bytes, /) -> bytes | None: ...

    def __contains__(self, key: object, /) -> bool: ...

    def __setitem__(self, key: bytes, value: bytes, /) -> None: ...

    def __delitem__(self, key: bytes, /) -> None: ...

    def keys(self) -> Iterable[bytes]: ...


# ------------------------------------------------------------------------------------- the processor


def ban_expiries(outs: list[Output], start: int = 0) -> Iterator[tuple[float, str]]:
    """(expires_at, target) of the bans among ``outs[start:]`` that will need lifting."""
    for o in outs[start:]:
        d = o.decision
        if d.action == "ban" and d.expires_at is not None:
            yield d.expires_at.timestamp(), d.ip


@dataclass
class Driver(ABC):
    """The jail core driven over a store of target states, noting the expiry of each ban it decides: one
    driver for the worker (:class:`Processor`: the wall clock, durable state in a :class:`StateStore`)
    and for ``fleet2ban replay`` and the benchmarks (``processor.engine.Engine``: the events' clock, a
    dict of states). A subclass says how a target's state is read and written (``_get``, ``_put``:
    ``Policy``'s get/put) and how a ban's expiry is remembered (``_expire_at``)."""

    policy: Policy

    @abstractmethod
    def _get(self, target: str) -> TargetState | None: ...

    @abstractmethod
    def _put(self, target: str, state: TargetState | None) -> None: ...

    @abstractmethod
    def _expire_at(self, expires: float, target: str) -> None: ...

    def _note(self, out: list[Output], start: int) -> None:
        for expires, target in ban_expiries(out, start):
            self._expire_at(expires, target)

    def feed_record(self, events: Sequence[Event], out: list[Output]) -> None:
        """Apply the events of one ``events`` record (any mix of addresses, in order:
        ``Policy.process_events``), without moving the clock."""
        n = len(out)
        self.policy.process_events(self._get, self._put, events, out)
        if len(out) > n:
            self._note(out, n)

    def feed_batch(self, ip: str, events: Sequence[Event], out: list[Output]) -> None:
        """Apply the events of one address, without moving the clock."""
        n = len(out)
        self.policy.process(self._get, self._put, ip, events, out)
        if len(out) > n:
            self._note(out, n)

    def apply_manual(self, decision: Decision, out: list[Output]) -> None:
        """An operator's decision (``Policy.manual``) on its target's state."""
        target = normalize_target(decision.ip)
        n = len(out)
        self._put(target, self.policy.manual(self._get(target), decision, out))
        self._note(out, n)


@dataclass
class Processor(Driver):
    """The worker's driver: records of each kind and the wall clock through the core, over a
    :class:`StateStore` (the Faust table in the worker, a dict in tests and tools).

    Ban expiries are kept in a heap filled from the decisions the core emits; everything else that the
    clock can change (idle state to forget, bans recovered from the changelog after a restart or a
    rebalance) is found by a sweep over the table every ``sweep_every`` seconds, and at once after a
    partition assignment (``sweep_due``).
    """

    table: StateStore
    """The changelogged durable part of each state (``durable_part``): bans, ban counts, floors."""
    partitions: int = 1
    """Partitions of the events topic (keys map to them with murmur2, as the table's do)."""
    prefix_v6: int = 64
    """``kafka.partition_prefix_v6``: IPv6 addresses and targets map to a partition by this prefix."""
    sweep_every: float = 10.0
    watermarks: dict[int, float] = field(default_factory=dict)
    """Per events partition, the newest event time read. Idle state is forgotten by this clock, never by
    the wall clock alone: a worker catching up on a backlog (after an outage or a restart) must not
    forget failures that the backlog's older events still count with."""
    sweep_due: bool = True
    expiries: list[tuple[float, bytes]] = field(default_factory=list)
    live: dict[str, TargetState] = field(default_factory=dict)
    """The whole state of each target this worker is counting (windows included), in memory only:
    windows are rebuilt from the events topic after an assignment (``processor.rebuild``)."""
    stored: dict[str, bytes] = field(default_factory=dict)
    """For targets in ``live``: the table's value for them (absent: no entry), so that a record that
    changes no durable state costs no table lookup."""
    verifier: Verifier | None = None
    """Checks each events record's host signature (DESIGN §8): one that does not verify changes nothing."""
    _parts: EventsPartitions = field(init=False, repr=False)
    _next_sweep: float = 0.0

    def __post_init__(self) -> None:
        self._parts = EventsPartitions(self.partitions, self.prefix_v6, PARTITION_CACHE_MAX)

    def partition_of(self, ip: str) -> int:
        """The events partition of an address or target (``contract.EventsPartitions``)."""
        return self._parts.of(ip)

    def _get(self, target: str) -> TargetState | None:
        state = self.live.get(target)
        if state is None:
            raw = self.table.get(target.encode())
            if raw is not None:  # recovered from the changelog: bans, ban counts, floors
                state = self.live[target] = decode_state(raw)
                self.stored[target] = raw
        return state

    def _put(self, target: str, state: TargetState | None) -> None:
        stored = self.stored
        if state is None:
            if self.live.pop(target, None) is None:
                # never loaded through _get (a caller's own state): the table is the truth
                if target.encode() in self.table:
                    del self.table[target.encode()]
            elif stored.pop(target, None) is not None:
                del self.table[target.encode()]
            return
        self.live[target] = state
        durable = durable_part(state, self.policy.bans_jails)
        if durable is None:
            if stored.pop(target, None) is not None:
                del self.table[target.encode()]
            return
        raw = encode_state(durable)
        if stored.get(target) != raw:  # only changes reach the changelog
            self.table[target.encode()] = raw
            stored[target] = raw

    def owner(self, actives: set[int]) -> Callable[[bytes], bool]:
        """Whether a key (a target's text) belongs to one of the events partitions ``actives``."""
        part_of = self.partition_of
        return lambda key: part_of(key.decode()) in actives

    def forget_partitions(self, partitions: set[int]) -> int:
        """Drop the in-memory state of targets in ``partitions`` (revoked: another worker rebuilds it)."""
        gone = [t for t in self.live if self.partition_of(t) in partitions]
        for t in gone:
            del self.live[t]
            self.stored.pop(t, None)
        for p in partitions:
            self.watermarks.pop(p, None)
        return len(gone)

    def _expire_at(self, expires: float, target: str) -> None:
        heapq.heappush(self.expiries, (expires, target.encode()))

    def on_events_record(
        self,
        key: bytes | None,
        value: bytes | None,
        out: list[Output],
        replay: bool = False,
        partition: int | None = None,
        headers: Headers = None,
    ) -> None:
        """One ``events`` record of either shape (bad input is counted, logged at a bounded rate and
        skipped): the core over its lines in order (``Policy.process_events``).

        ``headers``: the record's, whose host signature ``verifier`` checks against the host the record
        names (a record that does not verify is dropped and counted: ``fleet2ban_identity_rejected``).

        ``partition``: the events partition the record was read from; lines of addresses that hash to
        another one are refused (their state lives in another partition of the table). ``replay``: a
        record read back to rebuild windows (counted apart from the records consumed)."""
        events = self._decode(key, value, replay, headers)
        if events is None:
            return
        if partition is None:  # no partition given (tests, tools): each line's own
            self._note_times(events)
        else:
            events = self._in_partition(events, partition, key, replay)
            if not events:
                return
            newest = max(map(_event_time, events)).timestamp()
            if newest > self.watermarks.get(partition, NEG_INF):
                self.watermarks[partition] = newest
        self.feed_record(events, out)

    def _decode(
        self, key: bytes | None, value: bytes | None, replay: bool, headers: Headers
    ) -> list[Event] | None:
        """The lines of a record, counted (records, lines, bad ones); None for a record that is too
        large, invalid, or whose host signature does not verify."""
        if replay:
            m.REPLAYED.inc()
        else:
            m.RECORDS.inc()
        if value is not None and len(value) > MAX_RECORD_BYTES:
            if not replay:
                m.BAD_RECORDS.labels("events", "too_large").inc()
                rlog.warning("events-large", "skipped an events record of %d bytes", len(value))
            return None
        try:
            events = decode_events(value)
        except ContractError as exc:
            if not replay:
                m.BAD_RECORDS.labels("events", "contract").inc()
            rlog.warning(
                "events-bad",
                "skipped an invalid events record%s (key %r): %s",
                " read back" if replay else "",
                key,
                exc,
            )
            return None
        # every line of a record carries the record's host (decode_events): the signer must be it
        if self.verifier is not None and not self.verifier.check(
            "events", key, value, headers, events[0].host, count=not replay
        ):
            return None
        if not replay:
            m.LINES.inc(len(events))
        return events

    def _note_times(self, events: list[Event]) -> None:
        """Move each line's partition's watermark to the line's event time (no partition given)."""
        watermarks = self.watermarks
        for ev in events:
            p = self.partition_of(ev.ip)
            t = ev.ts.timestamp()
            if t > watermarks.get(p, NEG_INF):
                watermarks[p] = t

    def _in_partition(
        self, events: list[Event], partition: int, key: bytes | None, replay: bool
    ) -> list[Event]:
        """``events`` without the lines whose addresses belong to another partition (refused, counted)."""
        parts = self._parts.each([ev.ip for ev in events])
        misrouted = len(parts) - parts.count(partition)
        if not misrouted:
            return events
        if not replay:
            m.BAD_RECORDS.labels("events", "partition").inc()
        rlog.warning(
            "events-partition",
            "refused %d lines of an events record in partition %d (key %r): their addresses"
            " belong to other partitions",
            misrouted,
            partition,
            key,
        )
        return [ev for ev, p in zip(events, parts, strict=True) if p == partition]

    def on_allow_record(
        self,
        key: bytes | None,
        value: bytes | None,
        now: float,
        owned: Callable[[bytes], bool],
        out: list[Output],
    ) -> None:
        """One ``allow`` record: :meth:`ingest_allow`, then :meth:`lift_covered` for a new entry."""
        entry = self.ingest_allow(key, value, now)
        if entry is not None:
            self.lift_covered([entry], now, owned, out)

    def ingest_allow(self, key: bytes | None, value: bytes | None, now: float) -> AllowEntry | None:
        """One ``allow`` record (every worker reads the whole topic) into the allow-list; returns the
        entry it put in force (None: a tombstone, an expired entry, or an invalid record, counted)."""
        allow = self.policy.allow
        if allow is None:
            allow = self.policy.allow = AllowList()
        try:
            _key, entry = allow.ingest(key, value)
        except ContractError as exc:
            m.BAD_RECORDS.labels("allow", "contract").inc()
            rlog.warning("allow-bad", "skipped an invalid allow record (key %r): %s", key, exc)
            return None
        self.policy.allow_changed()
        if entry is None or not entry.active_at(from_epoch(now)):
            return None
        return entry

    def lift_covered(
        self, entries: list[AllowEntry], now: float, owned: Callable[[bytes], bool], out: list[Output]
    ) -> None:
        """Lift the bans in force that ``entries`` cover on this worker's targets: one pass over them
        (a batch of records, e.g. the whole topic read at start, costs one pass, not one per entry)."""
        if not entries:
            return
        nets = [target_network(e.network) for e in entries]
        n = len(out)
        for target in self._owned_targets(owned):
            try:
                tnet = target_network(target)
            except (ContractError, ValueError):
                continue
            if not any(tnet.version == net.version and tnet.overlaps(net) for net in nets):
                continue
            state = self._get(target)
            if state is None:
                continue
            self._put(target, self.policy.lift(state, target, now, out))
        if len(out) > n:
            log.info(
                "allow-list entr%s %s lifted %d ban(s)",
                "y" if len(entries) == 1 else "ies",
                ", ".join(e.network for e in entries[:5]),
                len(out) - n,
            )

    def _owned_targets(self, owned: Callable[[bytes], bool]) -> list[str]:
        """Every target this worker holds state for (in memory or in the table) in its own partitions."""
        targets = [t for t in self.live if owned(t.encode())]
        targets += [t for k in list(self.table.keys()) if (t := k.decode()) not in self.live and owned(k)]
        return targets

    def on_decision_record(self, value: bytes | None, out: list[Output]) -> None:
        """One ``decisions`` record: operators' (manual) decisions are applied and mirrored."""
        try:
            d = decode_decision(value)
        except ContractError as exc:
            m.BAD_RECORDS.labels("decisions", "contract").inc()
            rlog.warning("decisions-bad", "skipped an invalid decisions record: %s", exc)
            return
        if d.origin != "manual" or d.action not in ("ban", "unban"):
            return  # allow/unallow: audit records (the allow topic carries the entries)
        if d.action == "ban" and d.expires_at is not None and d.expires_at.timestamp() <= time.time():
            # a fresh consumer group reads the retained audit log from its start: a manual ban that has
            # long expired must not be mirrored (and then lifted) again
            m.DECISIONS.labels("expired_manual_skipped", "manual").inc()
            return
        self.apply_manual(d, out)

    def _tick_key(self, key: bytes, now: float, out: list[Output]) -> None:
        target = key.decode()
        n = len(out)
        read_up_to = self.watermarks.get(self.partition_of(target), NEG_INF)
        self._put(target, self.policy.tick(self._get(target), target, now, out, forget_now=read_up_to))
        self._note(out, n)

    def tick(self, now: float, owned: Callable[[bytes], bool], out: list[Output]) -> None:
        """Expire bans due by ``now`` and, when a sweep is due, forget idle state (owned keys only)."""
        self.policy.allow_expiry(now)
        heap = self.expiries
        while heap and heap[0][0] <= now:
            _, key = heapq.heappop(heap)
            if key in self.table and owned(key):
                self._tick_key(key, now, out)
        if self.sweep_due or now >= self._next_sweep:
            self.sweep(now, owned, out)

    def sweep(self, now: float, owned: Callable[[bytes], bool], out: list[Output]) -> None:
        recovered = self.sweep_due
        self.sweep_due = False
        self._next_sweep = now + self.sweep_every
        bans = keys = 0
        # the targets this worker counts, and those recovered from the changelog not yet seen again
        targets = self._owned_targets(owned)
        for target in targets:
            state = self._get(target)
            if state is None:
                continue
            d = self.policy.deadline(state)
            key = target.encode()
            if d is not None and d <= now:
                self._tick_key(key, now, out)
                state = self.live.get(target)
                if state is None:
                    continue
            allow = self.policy.allow
            if allow is not None and allow.entries and any(js.ban for js in state.jails.values()):
                # a ban an entry covers that was not lifted when the entry came (not owned then)
                self._put(target, self.policy.lift(state, target, now, out))
                state = self.live.get(target)
                if state is None:
                    continue
            keys += 1
            for js in state.jails.values():
                if js.ban is not None:
                    bans += 1
                    if recovered and js.ban.expires_at is not None:
                        heapq.heappush(self.expiries, (js.ban.expires_at, key))
        m.ACTIVE_BANS.set(bans)
        m.TABLE_SIZE.set(keys)
