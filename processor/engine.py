"""The core driven by one clock over a dict of states: what ``fleet2ban replay`` and the benchmark run.

Events are fed in (roughly) event-time order; the newest event time seen is the clock that expires
bans, exactly as the Faust worker's timer does with the wall clock. An event dated beyond the policy's
``max_future_s`` ahead of its (wall) clock neither counts nor moves this clock (issue 20). No I/O.

Expiry is driven by a heap of the bans' ``expires_at`` (filled from the decisions the core emits);
forgetting idle state by a sweep over all states every ``sweep_every`` seconds of the clock, so the hot
path never computes deadlines.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from fleet2ban.contract import ContractError, Decision, Event
from processor.driver import Driver, ban_expiries
from processor.policy import Jail, JailState, Output, TargetState

__all__ = ["Engine", "ban_expiries"]


@dataclass
class Engine(Driver):
    """The core driven by the events' own clock over a dict of states (``processor.driver.Driver``)."""

    sweep_every: float = 30.0
    states: dict[str, TargetState] = field(default_factory=dict)
    clock: float = -math.inf
    bad_events: int = 0
    _expiries: list[tuple[float, str]] = field(default_factory=list, repr=False)
    _next_sweep: float = -math.inf

    def _get(self, target: str) -> TargetState | None:
        return self.states.get(target)

    def _put(self, target: str, state: TargetState | None) -> None:
        if state is None:
            self.states.pop(target, None)
        else:
            self.states[target] = state

    def _expire_at(self, expires: float, target: str) -> None:
        heapq.heappush(self._expiries, (expires, target))

    def feed(self, events: Iterable[Event], out: list[Output] | None = None) -> list[Output]:
        """Apply events one by one (any mix of addresses), moving the clock with them."""
        out = [] if out is None else out
        policy = self.policy
        process = policy.process
        failure = policy._failure
        counters = policy.counters
        routes = policy._routes
        singles: dict[str, tuple[str, tuple[Jail, ...]] | None] = {}
        unknown = ("", ())
        limit = policy.future_limit() if policy.max_future_s != math.inf else math.inf
        states = self.states
        get, put = self._get, self._put
        heap = self._expiries
        for ev in events:
            t = ev.ts.timestamp()
            if t > limit:  # beyond the clock's bound: it must neither count nor move the clock
                counters.note_future(ev.host)
                continue
            if t > self.clock:
                self.clock = t
                if t >= self._next_sweep:
                    self.advance(t, out)
            if heap and heap[0][0] <= self.clock:  # also bans noted since the clock last moved
                self.advance(self.clock, out)
            n = len(out)
            ip = ev.ip
            single = singles.get(ip, unknown)
            if single is unknown:
                try:
                    route = routes.get(ip) or policy.route(ip)
                except ContractError:
                    self.bad_events += 1
                    continue
                single = singles[ip] = route.single
            if single is None:  # ignored by a jail, or several targets: the general path
                process(get, put, ip, (ev,), out)
            else:  # one target: Policy.apply without its routing, each failure through Policy._failure
                counters.events += 1
                target, jails = single
                state = states.get(target)
                reason = ev.reason
                for j in jails:
                    if reason not in j.reasons:
                        counters.not_failure += 1
                        continue
                    if state is None:
                        state = states[target] = TargetState()
                    js = state.jails.get(j.name)
                    if js is None:
                        js = state.jails[j.name] = JailState()
                    failure(j, js, state, target, ev, t, out)
            if len(out) > n:
                self._note(out, n)
        return out

    def advance(self, now: float, out: list[Output] | None = None) -> list[Output]:
        """Move the clock to ``now``: expire bans; every ``sweep_every`` forget idle state."""
        out = [] if out is None else out
        self.clock = max(self.clock, now)
        heap = self._expiries
        policy = self.policy
        while heap and heap[0][0] <= now:
            _, target = heapq.heappop(heap)
            state = self.states.get(target)
            if state is not None:
                n = len(out)
                self._put(target, policy.tick(state, target, now, out))
                self._note(out, n)
        if now >= self._next_sweep:
            self._next_sweep = now + self.sweep_every
            for target in list(self.states):
                state = self.states[target]
                d = policy.deadline(state)
                if d is not None and d <= now:
                    n = len(out)
                    self._put(target, policy.tick(state, target, now, out))
                    self._note(out, n)
        return out

    def manual(self, decision: Decision, out: list[Output] | None = None) -> list[Output]:
        out = [] if out is None else out
        self.apply_manual(decision, out)
        return out

    def active_bans(self) -> Iterator[tuple[str, str]]:
        for target, state in self.states.items():
            for jail, js in state.jails.items():
                if js.ban is not None:
                    yield jail, target
