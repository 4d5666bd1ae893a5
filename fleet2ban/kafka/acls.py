"""The fleet's Kafka ACLs, as data: who may do what on which topic or group (DESIGN §8).

One table serves ``fleet2ban acls apply`` (operators, against their own cluster), ``fleet2ban broker
--secure`` (the local cluster), the tests that prove each role works with only its grants and is refused
the rest, and the check that docs/deploying.md shows exactly this table (:func:`markdown_table`).

Kafka implies ``Describe`` from ``Read`` and ``Write``; the table still names it where a role only needs
to see a topic, so that it reads like the doc.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from fleet2ban.contract import Topics
from fleet2ban.exceptions import BrokerError, ConfigError

log = logging.getLogger(__name__)

NOGROUP_PREFIX = "fleet2ban-nogroup-"
"""The throw-away ``group.id`` prefix of the readers that assign partitions and never join a group.

librdkafka asks the group's coordinator even for such a reader (FindCoordinator needs ``Describe`` on the
group); without this grant the brokers refuse it and librdkafka logs GROUP_AUTHORIZATION_FAILED."""

ROLE_DESCRIPTIONS = {
    "shipper": "one per AMPS host: writes events and its heartbeats",
    "processor": "decides bans: reads events, decisions and the allow-list, writes decisions, bans and its heartbeats",
    "enforcer": "one per AMPS host: reads bans and the allow-list, writes reports",
    "operator": "people and the console: reads the audit trail, writes manual decisions and the allow-list",
    "notifier": "sends decisions to webhooks, Slack, e-mail: reads decisions in its group, heartbeats",
    "admin": "the topics Job: creates and checks the topics",
}


@dataclass(frozen=True)
class Grant:
    """``principal`` is allowed ``operations`` on one resource (a topic or a consumer group)."""

    role: str
    operations: tuple[str, ...]
    resource: str  # "topic" | "group"
    name: str
    prefixed: bool = False

    def describe(self, principal: str) -> str:
        kind = f"{self.resource}s with prefix" if self.prefixed else self.resource
        return f"{principal}: {', '.join(self.operations)} on {kind} {self.name}"


def principal_of(role: str, user_prefix: str = "fleet2ban-") -> str:
    return f"User:{user_prefix}{role}"


def fleet_grants(
    topic_prefix: str = "fleet2ban.",
    processor_app_id: str = "fleet2ban-processor",
    notifier_group_id: str = "fleet2ban-notifier",
) -> list[Grant]:
    """Every grant of the fleet for topics under ``topic_prefix``, in the doc's order."""
    t = Topics(topic_prefix)
    app = f"{topic_prefix}{processor_app_id}"
    notifier = f"{topic_prefix}{notifier_group_id}"
    rows: list[tuple[str, tuple[str, ...], str, list[str], bool]] = [
        ("shipper", ("Write", "Describe"), "topic", [t.events, t.reports], False),
        ("processor", ("Read", "Describe"), "topic", [t.events, t.decisions, t.allow], False),
        ("processor", ("Write",), "topic", [t.decisions, t.bans, t.reports], False),
        ("processor", ("Read", "Write", "Create", "Describe"), "topic", [app], True),
        ("processor", ("Read",), "group", [app], False),
        ("processor", ("Describe",), "group", [NOGROUP_PREFIX], True),
        ("enforcer", ("Read", "Describe"), "topic", [t.bans, t.allow], False),
        ("enforcer", ("Write", "Describe"), "topic", [t.reports], False),
        ("enforcer", ("Describe",), "group", [NOGROUP_PREFIX], True),
        ("operator", ("Write",), "topic", [t.decisions, t.allow], False),
        (
            "operator",
            ("Read", "Describe"),
            "topic",
            [t.decisions, t.bans, t.reports, t.events, t.allow],
            False,
        ),
        ("operator", ("Describe",), "group", [NOGROUP_PREFIX], True),
        ("notifier", ("Read", "Describe"), "topic", [t.decisions], False),
        ("notifier", ("Write", "Describe"), "topic", [t.reports], False),
        ("notifier", ("Read",), "group", [notifier], False),
        ("admin", ("Create", "Describe", "DescribeConfigs"), "topic", [topic_prefix], True),
    ]
    return [Grant(role, ops, res, name, pre) for role, ops, res, names, pre in rows for name in names]


def markdown_table(grants: Iterable[Grant], user_prefix: str = "fleet2ban-") -> str:
    """The ACL table of docs/deploying.md (rows grouped like the doc: one per role, operations, kind)."""
    lines = ["| principal | allow | on |", "|---|---|---|"]
    merged: list[tuple[str, tuple[str, ...], str, bool, list[str]]] = []
    for g in grants:
        last = merged[-1] if merged else None
        if last is not None and (last[0], last[1], last[2], last[3]) == (
            g.role,
            g.operations,
            g.resource,
            g.prefixed,
        ):
            last[4].append(g.name)
        else:
            merged.append((g.role, g.operations, g.resource, g.prefixed, [g.name]))
    seen: set[str] = set()
    for role, ops, res, pre, names in merged:
        who = "" if role in seen else f"`{principal_of(role, user_prefix)}`"
        seen.add(role)
        kind = res + ("s" if len(names) > 1 or pre else "") + (" with prefix" if pre else "")
        on = f"{kind} " + ", ".join(f"`{n}`" for n in names)
        lines.append(f"| {who} | {', '.join(ops)} | {on} |")
    return "\n".join(lines)


def _bindings(grants: Iterable[Grant], user_prefix: str) -> list[object]:
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AclBinding,
        AclOperation,
        AclPermissionType,
        ResourcePatternType,
        ResourceType,
    )

    ops = {
        "Read": AclOperation.READ,
        "Write": AclOperation.WRITE,
        "Create": AclOperation.CREATE,
        "Describe": AclOperation.DESCRIBE,
        "DescribeConfigs": AclOperation.DESCRIBE_CONFIGS,
    }
    kinds = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP}
    out: list[object] = []
    for g in grants:
        pattern = ResourcePatternType.PREFIXED if g.prefixed else ResourcePatternType.LITERAL
        for op in g.operations:
            out.append(
                AclBinding(
                    kinds[g.resource],
                    g.name,
                    pattern,
                    principal_of(g.role, user_prefix),
                    "*",
                    ops[op],
                    AclPermissionType.ALLOW,
                )
            )
    return out


def apply_acls(
    admin_conf: dict[str, Any], grants: list[Grant], user_prefix: str = "fleet2ban-", timeout: float = 15.0
) -> int:
    """Create every grant's ACL bindings (idempotent: Kafka keeps one copy of an ACL). Returns how many
    bindings were sent. ``admin_conf``: a librdkafka configuration of a principal allowed to alter ACLs
    (``Alter`` on the cluster, or a super user)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    bindings = _bindings(grants, user_prefix)
    admin = AdminClient({**admin_conf, "log_level": 0})
    futures = admin.create_acls(bindings, request_timeout=timeout)  # type: ignore[arg-type]
    for binding, fut in futures.items():
        try:
            fut.result(timeout)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else exc
            text = err.str() if hasattr(err, "str") else str(err)
            if "AUTHORIZATION" in str(err) or "uthoriz" in text:
                raise ConfigError(
                    "not allowed to create ACLs: run fleet2ban acls apply with the settings of the cluster's "
                    "administrator (Alter on the cluster, or a super user)"
                ) from None
            raise BrokerError(f"creating ACL {binding} failed: {text}") from None
    log.info("applied %d ACL bindings for %d grants", len(bindings), len(grants))
    return len(bindings)
