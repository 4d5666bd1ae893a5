"""The core's decisions out to Kafka: ``decisions`` (what operators and enforcers read) and ``bans`` (the
compacted state of each ban, a tombstone when it ends), with the log line and metrics of each."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from fleet2ban.contract import BanState, Decision, ban_key, encode
from processor import metrics as m
from processor.policy import Counters, Output

log = logging.getLogger("fleet2ban.processor")


class Sink(Protocol):
    """A topic records are sent to (a Faust topic of bytes in the worker)."""

    async def send(self, *, key: bytes, value: bytes | None) -> object: ...


def outputs_to_records(outs: list[Output]) -> list[tuple[str, bytes, bytes | None]]:
    """(topic kind, key, value) records for the decisions and bans topics, in order."""
    recs: list[tuple[str, bytes, bytes | None]] = []
    for o in outs:
        d: Decision = o.decision
        if o.publish:
            recs.append(("decisions", d.ip.encode(), encode(d)))
        bkey = ban_key(d.jail, d.ip).encode()
        if d.action == "ban":
            recs.append(("bans", bkey, encode(BanState.from_decision(d))))
        else:
            recs.append(("bans", bkey, None))
    return recs


@dataclass
class Publisher:
    """Sends the core's outputs (``await publisher(outs)``), in order, then exports the core's counters."""

    decisions: Sink
    bans: Sink
    counters: Counters

    async def __call__(self, outs: list[Output]) -> None:
        now = time.time()
        for o in outs:
            log_output(o, now)
        for kind, key, value in outputs_to_records(outs):
            topic = self.decisions if kind == "decisions" else self.bans
            await topic.send(key=key, value=value)
        m.export_counters(self.counters)


def log_output(o: Output, now: float) -> None:
    """The log line and metrics of one output (``now``: when it is published, for the ban delay)."""
    d = o.decision
    m.DECISIONS.labels(d.action, d.origin).inc()
    if d.action == "ban" and d.origin == "auto":
        m.DECISION_DELAY.observe(max(0.0, now - d.at.timestamp()))
        log.info(
            "ban %s jail=%s failures=%d hosts=%s scope=%s until=%s id=%s",
            d.ip,
            d.jail,
            d.failures,
            ",".join(d.hosts),
            "fleet" if d.scope is None else ",".join(d.scope),
            d.expires_at,
            d.id,
        )
    elif o.publish:
        log.info("unban %s jail=%s (%s) id=%s", d.ip, d.jail, d.reason or "", d.id)
    else:
        log.info("mirror manual %s %s jail=%s by=%s id=%s", d.action, d.ip, d.jail, d.by, d.id)
