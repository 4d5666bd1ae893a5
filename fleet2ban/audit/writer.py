"""Write operators' manual decisions to ``decisions`` (the CLI is that topic's only other writer), and
optionally wait until the processor has mirrored them to ``bans``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from fleet2ban.contract import BanState, ContractError, Decision, ban_key, decode_ban, encode, split_ban_key
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
