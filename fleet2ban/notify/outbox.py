"""What each destination still has to send, and which ``decisions`` offsets may be committed (pure)."""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field

from fleet2ban.contract import Decision
from fleet2ban.settings import DestinationSettings

Position = tuple[int, int]
"""(partition, offset) of a ``decisions`` record."""


@dataclass(frozen=True)
class Item:
    decision: Decision
    position: Position


def wants(dest: DestinationSettings, d: Decision) -> bool:
    """Whether ``dest``'s filters (jails, actions, origins; empty = all) let ``d`` through."""
    return (
        (not dest.jails or d.jail in dest.jails)
        and (not dest.actions or d.action in dest.actions)
        and (not dest.origins or d.origin in dest.origins)
    )


@dataclass
class Outbox:
    """One destination's queue. At most one message per ``digest_interval_s``: what arrives meanwhile
    waits and leaves as one digest; a failed send is retried with exponential backoff."""

    dest: DestinationSettings
    retry_initial_s: float = 0.5
    retry_max_s: float = 60.0
    queue: deque[Item] = field(default_factory=deque)
    last_sent: float | None = None
    failures: int = 0
    next_try: float = 0.0
    dropped: int = 0

    def offer(self, item: Item) -> list[Item]:
        """Queue ``item``; returns the items dropped to keep ``max_pending`` (oldest first)."""
        self.queue.append(item)
        out = []
        while len(self.queue) > self.dest.max_pending:
            out.append(self.queue.popleft())
        self.dropped += len(out)
        return out

    def due_at(self) -> float | None:
        """When the next message may leave (None: nothing queued)."""
        if not self.queue:
            return None
        at = self.next_try
        if self.last_sent is not None:
            at = max(at, self.last_sent + self.dest.digest_interval_s)
        return at

    def take(self, now: float) -> list[Item]:
        """The items of the next message if one is due at ``now`` (they stay queued until :meth:`sent`)."""
        at = self.due_at()
        if at is None or at > now:
            return []
        if self.dest.digest_interval_s == 0:
            return [self.queue[0]]
        return list(self.queue)

    def sent(self, items: list[Item], now: float) -> None:
        ids = {id(i) for i in items}
        self.queue = deque(i for i in self.queue if id(i) not in ids)
        self.last_sent = now
        self.failures = 0
        self.next_try = 0.0

    def failed(self, now: float) -> float:
        """Back off after a failed send; returns the delay."""
        self.failures += 1
        delay = float(min(self.retry_max_s, self.retry_initial_s * 2.0 ** (self.failures - 1)))
        self.next_try = now + delay
        return delay


@dataclass
class Commits:
    """Offsets every destination is done with. A record is done when each destination that wants it has
    sent it (or dropped it); the committable offset of a partition is its lowest record not done."""

    pending: dict[Position, int] = field(default_factory=dict)
    """Records not done, with how many destinations still owe them."""
    seen: dict[int, int] = field(default_factory=dict)
    """Per partition: the offset after the last record added."""

    def add(self, pos: Position, owed: int) -> None:
        p, off = pos
        self.seen[p] = max(self.seen.get(p, 0), off + 1)
        if owed > 0:
            self.pending[pos] = self.pending.get(pos, 0) + owed

    def done(self, pos: Position) -> None:
        left = self.pending.get(pos)
        if left is None:
            return
        if left <= 1:
            del self.pending[pos]
        else:
            self.pending[pos] = left - 1

    def committable(self) -> dict[int, int]:
        """Per partition: the offset to commit (every record before it is done)."""
        out = dict(self.seen)
        for p, off in self.pending:
            if off < out.get(p, off + 1):
                out[p] = off
        return out


class Seen:
    """The ids of the last ``size`` decisions handled: a decision read twice (a re-emitted automatic ban, a
    replay after a restart within the window) is sent once."""

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()

    def first_time(self, decision_id: str) -> bool:
        if decision_id in self._ids:
            self._ids.move_to_end(decision_id)
            return False
        self._ids[decision_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True
