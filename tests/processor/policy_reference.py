"""A brute-force reference of DESIGN §3: every window recomputed from scratch, nothing pruned.

Written independently of ``processor.policy`` (no bisect, no pruning, no shared helpers besides the wire
contract) so that the property tests compare two implementations of the same words.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from fleet2ban.contract import EVIDENCE_MAX, Decision, Event, auto_decision_id, from_epoch
from fleet2ban.settings import JailSettings


@dataclass
class _Counted:
    ts: float
    arrival: int
    id: str
    host: str
    raw: str


@dataclass
class _Ban:
    id: str
    expires: float | None
    ban_count: int
    ports: list[int]


@dataclass
class _Key:
    counted: list[_Counted] = field(default_factory=list)
    watermark: float = -math.inf
    floor: float = -math.inf
    ban: _Ban | None = None
    bans: int = 0
    last_manual: str | None = None


@dataclass
class Reference:
    jail: JailSettings
    lateness: float
    keys: dict[str, _Key] = field(default_factory=dict)
    arrivals: int = 0

    def _key(self, ip: str) -> _Key:
        return self.keys.setdefault(ip, _Key())

    def _unban(self, ip: str, k: _Key, out: list[tuple[Decision, bool]]) -> None:
        assert k.ban is not None and k.ban.expires is not None
        x = k.ban.expires
        out.append(
            (
                Decision(
                    id=auto_decision_id(self.jail.name, ip, k.ban.id, "unban"),
                    action="unban",
                    ip=ip,
                    jail=self.jail.name,
                    at=from_epoch(x),
                    ports=k.ban.ports,
                    ban_count=k.ban.ban_count,
                    origin="auto",
                    reason="expired",
                ),
                True,
            )
        )
        k.ban = None
        k.counted = []
        k.floor = max(k.floor, x)

    def event(self, ev: Event, out: list[tuple[Decision, bool]]) -> None:
        j = self.jail
        if ev.reason not in j.reasons:
            return
        ip = ev.ip
        k = self._key(ip)
        t = ev.ts.timestamp()
        self.arrivals += 1
        k.watermark = max(k.watermark, t)
        if k.ban is not None and k.ban.expires is not None and t >= k.ban.expires:
            self._unban(ip, k, out)
        if k.ban is not None:
            return
        if t < k.floor or t < k.watermark - self.lateness:
            return
        if any(c.id == ev.id for c in k.counted):
            return
        k.counted.append(_Counted(t, self.arrivals, ev.id, ev.host, ev.raw))

        def in_window(end: float) -> list[_Counted]:
            return [c for c in k.counted if end - j.findtime < c.ts <= end]

        ends = sorted({c.ts for c in k.counted if c.ts >= t})
        for end in ends:
            window = in_window(end)
            if len(window) >= j.maxretry:
                window.sort(key=lambda c: (c.ts, c.arrival))
                trigger = max((c for c in window if c.ts == end), key=lambda c: c.arrival)
                did = auto_decision_id(j.name, ip, trigger.id)
                expires = None if j.bantime < 0 else end + j.bantime
                k.bans += 1
                out.append(
                    (
                        Decision(
                            id=did,
                            action="ban",
                            ip=ip,
                            jail=j.name,
                            at=from_epoch(end),
                            ports=list(j.ports),
                            expires_at=None if expires is None else from_epoch(expires),
                            failures=len(window),
                            first_failure_at=from_epoch(window[0].ts),
                            last_failure_at=from_epoch(end),
                            hosts=sorted({c.host for c in window}),
                            ban_count=k.bans,
                            origin="auto",
                            evidence=[c.raw for c in window][-EVIDENCE_MAX:],
                        ),
                        True,
                    )
                )
                k.ban = _Ban(did, expires, k.bans, list(j.ports))
                k.counted = []
                return

    def tick(self, now: float, out: list[tuple[Decision, bool]]) -> None:
        for ip in sorted(self.keys):
            k = self.keys[ip]
            if k.ban is not None and k.ban.expires is not None and k.ban.expires <= now:
                self._unban(ip, k, out)

    def manual(self, d: Decision, out: list[tuple[Decision, bool]]) -> None:
        k = self._key(d.ip)
        if k.last_manual == d.id:
            return
        k.last_manual = d.id
        if d.action == "ban":
            k.bans += 1
            k.ban = _Ban(
                d.id,
                None if d.expires_at is None else d.expires_at.timestamp(),
                k.bans,
                list(d.ports or self.jail.ports),
            )
            k.counted = []
        else:
            k.ban = None
            k.counted = []
            k.floor = max(k.floor, k.watermark + 1e-6, d.at.timestamp() + 1e-6)
        out.append((d, False))
