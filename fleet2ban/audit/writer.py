"""Write operators' manual decisions to ``decisions`` (the CLI is that topic's only other writer), and
optionally wait until the processor has mirrored them to ``bans``."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from fleet2ban.allowlist import AllowList
from fleet2ban.contract import (
    AllowEntry,
    BanState,
    ContractError,
    Decision,
    ban_key,
    decode_ban,
    encode,
    split_ban_key,
)
from fleet2ban.exceptions import BrokerError
from fleet2ban.kafka import Cluster, KafkaAuthorizationError, Source, TopicReader, producer_config


@dataclass(frozen=True)
class Written:
    partition: int
    offset: int


def publish_decision(cluster: Cluster, decision: Decision, timeout: float = 10.0) -> Written:
    """Produce one decision (key: its target) and wait for the broker's acknowledgement."""
    from confluent_kafka import KafkaException, Producer

    result: dict[str, object] = {}

    def delivered(err: object, msg: object) -> None:
        result["err"] = err
        result["msg"] = msg

    producer = Producer({**producer_config(cluster, linger_ms=0), "log_level": 0})
    try:
        producer.produce(
            cluster.topics.decisions, key=decision.ip.encode(), value=encode(decision), on_delivery=delivered
        )
        remaining = producer.flush(timeout)
    except KafkaException as exc:
        raise BrokerError(f"writing the decision failed: {exc}") from None
    if remaining or "msg" not in result:
        raise BrokerError(f"the broker did not acknowledge the decision within {timeout:g}s")
    if result["err"] is not None:
        if "AUTHORIZATION_FAILED" in str(result["err"]):
            raise KafkaAuthorizationError(
                f"{cluster.principal} may not write to topic {cluster.topics.decisions}: it needs an ACL"
                " allowing Write on it (the operator role's settings); nothing was written"
            )
        raise BrokerError(f"writing the decision failed: {result['err']}")
    msg = result["msg"]
    return Written(msg.partition(), msg.offset())  # type: ignore[attr-defined]


def wait_for_mirror(cluster: Cluster, decision: Decision, timeout: float, since: datetime) -> BanState | None:
    """Wait until ``bans`` reflects ``decision``: its ban state (ban) or a tombstone (unban) for its key,
    recorded after ``since``. Returns the state (None for a tombstone); raises BrokerError on timeout."""
    key = ban_key(decision.jail, decision.ip)
    found: dict[str, BanState | None] = {}

    def feed(kind: str, k: bytes | None, value: bytes | None, ts: datetime | None) -> None:
        if k is None:
            return
        try:
            jail, ip = split_ban_key(k)
            if ban_key(jail, ip) != key:
                return
            state = None if value is None else decode_ban(value)
        except ContractError:
            return
        if decision.action == "ban" and state is not None and state.decision_id == decision.id:
            found["state"] = state
        elif decision.action == "unban" and state is None:
            found["state"] = None

    src = Source("bans", cluster.topics.bans, since=since - timedelta(seconds=2))
    deadline = time.monotonic() + timeout
    with TopicReader(cluster, [src], feed) as reader:
        while "state" not in found:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"decision {decision.id} written, but the processor did not mirror it to bans within "
                    f"{timeout:g}s (is a processor running?)"
                )
            reader.poll(0.2)
    return found["state"]


def publish_decisions(cluster: Cluster, decisions: list[Decision], timeout: float = 60.0) -> int:
    """Produce many decisions in batches (``bans import``) and wait until the broker acknowledged every
    one; returns how many. Raises :class:`BrokerError` naming the first failure."""
    from confluent_kafka import KafkaException, Producer

    failures: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    producer = Producer(
        {**producer_config(cluster, linger_ms=20), "log_level": 0, "batch.num.messages": 10_000}
    )
    topic = cluster.topics.decisions
    try:
        for d in decisions:
            while True:
                try:
                    producer.produce(topic, key=d.ip.encode(), value=encode(d), on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.1)
            producer.poll(0)
        remaining = producer.flush(timeout)
    except KafkaException as exc:
        raise BrokerError(f"writing decisions failed: {exc}") from None
    if remaining:
        raise BrokerError(f"the broker did not acknowledge {remaining} decisions within {timeout:g}s")
    if failures:
        raise BrokerError(f"{len(failures)} of {len(decisions)} decisions were not written: {failures[0]}")
    return len(decisions)


def publish_allow(
    cluster: Cluster, key: str, entry: AllowEntry | None, audit: Decision, timeout: float = 10.0
) -> None:
    """Write one allow-list change: the entry (or a tombstone for ``key``) to ``allow``, and its audit
    record (``allow``/``unallow``) to ``decisions``, and wait for the broker to acknowledge both.
    Raises :class:`BrokerError` (or :class:`KafkaAuthorizationError`) naming what was not written."""
    from confluent_kafka import KafkaException, Producer

    results: dict[str, object] = {}

    def delivered(what: str) -> Any:
        def cb(err: object, _msg: object) -> None:
            results[what] = err

        return cb

    topics = cluster.topics
    producer = Producer({**producer_config(cluster, linger_ms=0), "log_level": 0})
    try:
        value = None if entry is None else encode(entry)
        producer.produce(topics.allow, key=key.encode(), value=value, on_delivery=delivered(topics.allow))
        producer.produce(
            topics.decisions,
            key=audit.ip.encode(),
            value=encode(audit),
            on_delivery=delivered(topics.decisions),
        )
        remaining = producer.flush(timeout)
    except KafkaException as exc:
        raise BrokerError(f"writing the allow-list change failed: {exc}") from None
    if remaining or len(results) < 2:
        raise BrokerError(f"the broker did not acknowledge the allow-list change within {timeout:g}s")
    for topic, err in results.items():
        if err is None:
            continue
        if "AUTHORIZATION_FAILED" in str(err):
            raise KafkaAuthorizationError(
                f"{cluster.principal} may not write to topic {topic}: it needs an ACL allowing Write on it"
                " (the operator role's settings)"
            )
        raise BrokerError(f"writing the allow-list change to {topic} failed: {err}")


def read_allow_list(cluster: Cluster) -> AllowList:
    """The ``allow`` topic read to its end (invalid records are skipped)."""
    allow = AllowList()

    def feed(_kind: str, key: bytes | None, value: bytes | None, _ts: datetime | None) -> None:
        with contextlib.suppress(ContractError):
            allow.ingest(key, value)

    with TopicReader(cluster, [Source("allow", cluster.topics.allow)], feed) as reader:
        reader.catch_up()
    return allow
