"""The dev fleet's traffic: legitimate clients all along, and attackers of three kinds in turn.

Attacker ``i`` plays ``badauth`` (wrong password, one host), ``nameclash`` (a duplicated client name,
one host) or ``spreader`` (wrong passwords spread over every host, fewer than maxretry per host within
findtime, so that only the fleet-wide count catches it). Each attacker attacks, waits until its ban has
lifted (it can connect again), and attacks again, until the scenario is stopped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from fleet2ban.dev.fleet import Client, DevFleet

log = logging.getLogger(__name__)

ATTACK_MODES = ("badauth", "spreader", "nameclash")


@dataclass
class ScenarioStats:
    outcomes: Counter[str] = field(default_factory=Counter)
    legit_outcomes: Counter[str] = field(default_factory=Counter)
    attacks: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Scenario:
    """Runs the clients in threads until :meth:`stop`."""

    def __init__(self, fleet: DevFleet, attack_rate: float = 50.0) -> None:
        self.fleet = fleet
        self.attack_rate = attack_rate
        self.stats = ScenarioStats()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def mode_of(self, index: int) -> str:
        return ATTACK_MODES[index % len(ATTACK_MODES)]

    def start(self) -> Scenario:
        for i, att in enumerate(self.fleet.attackers):
            t = threading.Thread(
                target=self._attacker, args=(att, self.mode_of(i)), daemon=True, name=att.name
            )
            self._threads.append(t)
        if self.fleet.legit is not None:
            self._threads.append(threading.Thread(target=self._legit, args=(self.fleet.legit,), daemon=True))
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)

    def _record(self, client: Client, outcomes: list[str], legit: bool) -> None:
        with self.stats.lock:
            (self.stats.legit_outcomes if legit else self.stats.outcomes).update(outcomes)

    def _attacker(self, att: Client, mode: str) -> None:
        hosts = self.fleet.hosts
        maxretry = self.fleet.opts.maxretry
        while not self._stop.is_set():
            if mode == "spreader":
                count = maxretry + 1  # at most ceil((maxretry+1)/hosts) on any one host
                targets = hosts
            else:
                count = maxretry + 5
                targets = [hosts[0]]
            try:
                attempts = self.fleet.run_client(
                    att, mode, count, rate=self.attack_rate, targets=targets, timeout=60
                )
            except Exception as exc:
                log.warning("attacker %s: %s", att.name, exc)
                self._stop.wait(2)
                continue
            with self.stats.lock:
                self.stats.attacks[mode] += 1
            self._record(att, [a["outcome"] for a in attempts], legit=False)
            # wait until this attacker is let in again (its ban lifted), then attack again
            while not self._stop.is_set():
                if self._stop.wait(2.0):
                    return
                if all(self.fleet.can_connect(att, h, timeout=0.3) for h in targets):
                    break

    def _legit(self, client: Client) -> None:
        while not self._stop.is_set():
            try:
                attempts = self.fleet.run_client(client, "legit", len(self.fleet.hosts), rate=5.0, timeout=30)
                self._record(client, [a["outcome"] for a in attempts], legit=True)
            except Exception as exc:
                log.warning("legit client: %s", exc)
            self._stop.wait(1.0)

    def wait(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            self._stop.wait(min(0.5, deadline - time.monotonic()))
