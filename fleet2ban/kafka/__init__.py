"""Everything fleet2ban does with Kafka, in one package.

- :mod:`.config`: the client configurations (confluent-kafka, aiokafka/Faust) built from the settings;
- :mod:`.topics`: creating and checking the fleet's topics;
- :mod:`.reader`: the one reader of topics without a consumer group (assign every partition, read to the
  end, seek by time, read a tail, follow live);
- :mod:`.local`: the local Apache Kafka (KRaft) started from its Maven Central jars.
"""

from fleet2ban.kafka.config import (
    Cluster,
    KafkaAuthorizationError,
    KafkaSecurityError,
    admin_config,
    aiokafka_kwargs,
    check_connection,
    consumer_config,
    faust_broker_settings,
    producer_config,
    resolve,
)
from fleet2ban.kafka.reader import (
    Record,
    Source,
    TopicReader,
    end_offsets,
    partition_count,
    read_tail,
    read_to_end,
)
from fleet2ban.kafka.topics import TopicCheck, ensure_topics, ensure_topics_quietly

__all__ = [
    "Cluster",
    "KafkaAuthorizationError",
    "KafkaSecurityError",
    "Record",
    "Source",
    "TopicCheck",
    "TopicReader",
    "admin_config",
    "aiokafka_kwargs",
    "check_connection",
    "consumer_config",
    "end_offsets",
    "ensure_topics",
    "ensure_topics_quietly",
    "faust_broker_settings",
    "partition_count",
    "producer_config",
    "read_tail",
    "read_to_end",
    "resolve",
]
