"""FleetView: the fleet's state folded from ``bans`` and ``reports`` records, one record at a time.

The CLI builds one by reading the topics to their end; the web console keeps one and feeds it records
as it follows the topics, so both answer from the same fold. No Kafka here: records come in as decoded
contract objects (``add_ban``/``add_report``/``add_decision``) or raw key/value bytes (``add_raw``).

What it keeps:
- the latest ``bans`` value per ``JAIL|IP`` key (a tombstone removes it, remembering when);
- per enforcer host: the keys it has applied (its latest complete heartbeat, updated by later
  ``applied``/``removed`` reports), and its latest ``failed``/``skipped`` report per key;
- per component (role, host, instance): its latest heartbeat;
- every decision id ever referenced by an ``applied`` report (for ``audit verify``);
- the latest decisions fed to it (bounded), for a live feed.

Liveness: a component is *silent* when its latest heartbeat is older than
``max(silence_factor * interval_s, min_silence_s)``. Only enforcers with a heartbeat count for coverage.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

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
    split_ban_key,
    utcnow,
)
from fleet2ban.identity import Headers, Verifier, check_report

REPORT_FUTURE = timedelta(hours=1)
"""How far ahead of a reader's clock a ``reports`` record may be dated: Kafka 4's own bound on a record's
timestamp (``message.timestamp.after.max.ms``, one hour), so that a host whose clock runs ahead, and whose
heartbeat says so (issue 16), is still seen; a record dated beyond it (9999) cannot keep a host live for
longer than that."""

TopicKind = Literal["bans", "reports", "decisions"]


@dataclass(slots=True)
class AppliedInfo:
    """One key applied on one enforcer: when it said so (``None``: known from a heartbeat only)."""

    at: datetime | None
    decision_id: str | None


@dataclass(slots=True)
class BanEntry:
    state: BanState
    recorded_at: datetime | None


@dataclass
class EnforcerState:
    """What one enforcer host has told us about its kernel."""

    host: str
    applied: dict[str, AppliedInfo] = field(default_factory=dict)
    failed: dict[str, Report] = field(default_factory=dict)
    skipped: dict[str, Report] = field(default_factory=dict)
    heartbeat: Heartbeat | None = None
    last_report_at: datetime | None = None


ComponentId = tuple[str, str, str]
"""(role, host, instance)"""


class FleetView:
    """The fleet's state, folded incrementally from ``bans``, ``reports`` (and ``decisions``) records."""

    def __init__(
        self,
        *,
        silence_factor: float = 3.0,
        min_silence_s: float = 10.0,
        recent_decisions: int = 1000,
        verifier: Verifier | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.verifier = verifier
        self.clock = clock
        """The reader's clock: ``reports`` records dated more than :data:`REPORT_FUTURE` ahead are skipped."""
        self._future_limit = datetime.min.replace(tzinfo=UTC)
        self.future = 0
        """``reports`` records skipped as dated beyond the reader's clock (a host clock far ahead)."""
        """Checks each ``reports`` record's host signature (:mod:`fleet2ban.identity`) in :meth:`add_raw`."""
        self.rejected = 0
        """``reports`` records dropped because their host signature did not verify."""
        self.silence_factor = silence_factor
        self.min_silence_s = min_silence_s
        self.bans: dict[str, BanEntry] = {}
        """Latest ``bans`` value per key (expired ones included until their tombstone)."""
        self.lifted: dict[str, datetime | None] = {}
        """Key -> when its tombstone was recorded (for keys not currently in ``bans``)."""
        self.ban_history: dict[str, str] = {}
        """decision id -> key, for every ``bans`` value seen (the topic's history, as far as it is kept)."""
        self.enforcers: dict[str, EnforcerState] = {}
        self.components: dict[ComponentId, Heartbeat] = {}
        self.lag_before: dict[ComponentId, float | None] = {}
        """Per component: the lag its heartbeat before the latest reported (is the lag growing?)."""
        self.referenced: dict[str, Report] = {}
        """decision id -> the first ``applied`` report naming it."""
        self.unreferenced_applied: dict[tuple[str, str], Report] = {}
        """(host, key) -> an ``applied`` report without a decision id."""
        self.recent_decisions: deque[Decision] = deque(maxlen=recent_decisions)
        self.reports_seen = 0
        self.bans_seen = 0
        self.decisions_seen = 0
        self.bad_records = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------------------------------ feeding

    def add_ban(self, key: str, state: BanState | None, recorded_at: datetime | None = None) -> None:
        """One ``bans`` record: a value sets the key's ban in force, ``None`` (tombstone) lifts it."""
        self.bans_seen += 1
        if state is None:
            if self.bans.pop(key, None) is not None or key not in self.lifted:
                self.lifted[key] = recorded_at
            return
        self.bans[key] = BanEntry(state, recorded_at)
        self.lifted.pop(key, None)
        self.ban_history[state.decision_id] = key

    def from_the_future(self, at: datetime) -> bool:
        """Whether a ``reports`` record dated ``at`` lies more than :data:`REPORT_FUTURE` ahead of the
        reader's clock (counted in ``future``): such a record is skipped by every reader."""
        if at <= self._future_limit:  # the clock is read only for records past the last limit
            return False
        self._future_limit = self.clock() + REPORT_FUTURE
        if at <= self._future_limit:
            return False
        self.future += 1
        return True

    def add_report(self, rec: Report | Heartbeat) -> None:
        """One ``reports`` record (an enforcer's action report or any component's heartbeat). One dated
        more than :data:`REPORT_FUTURE` ahead of the reader's clock is counted in ``future`` and skipped:
        kept, a heartbeat dated 9999 would stay the host's latest, showing a dead enforcer live forever."""
        self.reports_seen += 1
        if self.from_the_future(rec.at):
            return
        if isinstance(rec, Heartbeat):
            self._heartbeat(rec)
            return
        enf = self._enforcer(rec.host)
        if enf.last_report_at is None or rec.at > enf.last_report_at:
            enf.last_report_at = rec.at
        key = f"{rec.jail}|{rec.ip}"  # contract.ban_key, inlined: this runs per report
        if rec.kind == "applied":
            enf.applied[key] = AppliedInfo(rec.at, rec.decision_id)
            if enf.failed:
                enf.failed.pop(key, None)
            if enf.skipped:
                enf.skipped.pop(key, None)
            if rec.decision_id:
                if rec.decision_id not in self.referenced:
                    self.referenced[rec.decision_id] = rec
            else:
                self.unreferenced_applied[(rec.host, key)] = rec
        elif rec.kind == "removed":
            enf.applied.pop(key, None)
            enf.failed.pop(key, None)
            enf.skipped.pop(key, None)
        elif rec.kind == "failed":
            enf.failed[key] = rec
        elif rec.kind == "skipped":
            enf.skipped[key] = rec

    def _heartbeat(self, hb: Heartbeat) -> None:
        cid = (hb.role, hb.host, hb.instance)
        prev = self.components.get(cid)
        if prev is not None and prev.at > hb.at:
            return
        if prev is not None:
            self.lag_before[cid] = prev.lag
        self.components[cid] = hb
        if hb.role != "enforcer":
            return
        enf = self._enforcer(hb.host)
        enf.heartbeat = hb
        complete = hb.applied_total is None or hb.applied_total <= len(hb.applied)
        if complete:
            old = enf.applied
            enf.applied = {k: old.get(k) or AppliedInfo(None, None) for k in hb.applied}
            for k in list(enf.failed):
                if k in enf.applied:
                    del enf.failed[k]
        else:
            for k in hb.applied:
                enf.applied.setdefault(k, AppliedInfo(None, None))

    def add_decision(self, d: Decision) -> None:
        """One ``decisions`` record (kept in a bounded feed of the latest ones)."""
        self.decisions_seen += 1
        self.recent_decisions.append(d)

    def add_raw(
        self,
        kind: TopicKind,
        key: bytes | str | None,
        value: bytes | None,
        recorded_at: datetime | int | None,
        headers: Headers = None,
    ) -> bool:
        """Decode and fold one record of topic ``kind`` (``recorded_at``: the record's timestamp, as a
        datetime or epoch milliseconds); a record that breaks the contract is counted in
        ``bad_records`` and skipped (returns False). A ``reports`` record whose host signature
        (``headers``) does not verify with ``verifier`` is counted in ``rejected`` and skipped (the
        verifier logs it)."""
        try:
            if kind == "bans":
                if key is None:
                    raise ContractError("bans record without a key")
                if isinstance(recorded_at, int):
                    recorded_at = datetime.fromtimestamp(recorded_at / 1000.0, UTC)
                state = None if value is None else decode_ban(value)
                text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
                if state is None or text != f"{state.jail}|{state.ip}":  # else: already canonical
                    text = ban_key(*split_ban_key(text))
                self.add_ban(text, state, recorded_at)
            elif kind == "reports":
                rec = decode_report(value)
                role = rec.role if isinstance(rec, Heartbeat) else None
                if self.verifier is not None and not check_report(
                    self.verifier, key, value, headers, rec.host, role
                ):
                    self.rejected += 1
                    return True
                self.add_report(rec)
            else:
                self.add_decision(decode_decision(value))
        except ContractError as exc:
            self.bad_records += 1
            self.last_error = str(exc)
            return False
        return True

    def _enforcer(self, host: str) -> EnforcerState:
        enf = self.enforcers.get(host)
        if enf is None:
            enf = self.enforcers[host] = EnforcerState(host)
        return enf

    # ------------------------------------------------------------------------------------ reading

    def silence_bound(self, hb: Heartbeat) -> float:
        return max(self.silence_factor * hb.interval_s, self.min_silence_s)

    def is_silent(self, hb: Heartbeat, now: datetime) -> bool:
        return (now - hb.at).total_seconds() > self.silence_bound(hb)

    def live_enforcers(self, now: datetime) -> list[EnforcerState]:
        """Enforcers whose latest heartbeat is within the silence bound, by host name."""
        return [
            e
            for _, e in sorted(self.enforcers.items())
            if e.heartbeat is not None and not self.is_silent(e.heartbeat, now)
        ]

    def active(self, now: datetime, match: Callable[[str, str, str], bool] | None = None) -> Iterator[str]:
        """Keys of the bans in force at ``now`` (not expired), optionally filtered by ``match``."""
        for key, entry in self.bans.items():
            st = entry.state
            if st.expires_at is not None and st.expires_at <= now:
                continue
            if match is not None and not match(st.jail, st.origin, st.ip):
                continue
            yield key
