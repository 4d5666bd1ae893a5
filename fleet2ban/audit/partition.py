"""Which partition a key lives in: Kafka's murmur2 partitioner, as every fleet2ban producer uses.

Producers hash keys with murmur2 (confluent-kafka ``partitioner=murmur2_random``, aiokafka's and Java's
default), so a reader that wants one key (``bans show IP``) reads one partition instead of the topic. The
function is the wire contract's (:func:`fleet2ban.contract.partition_for`); this module names it for the
audit readers.
"""

from __future__ import annotations

from fleet2ban.contract import murmur2, partition_for

__all__ = ["murmur2", "partition_for"]
