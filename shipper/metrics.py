"""The shipper's Prometheus metrics (served by fleet2ban.metrics on ``metrics.port``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

LINES_READ = Counter("fleet2ban_shipper_lines_read", "Log lines read (complete lines)")
EVENTS_READ = Counter("fleet2ban_shipper_events_read", "07-0013 lines parsed into events")
EVENTS_SHIPPED = Counter("fleet2ban_shipper_events_shipped", "Events acknowledged by the broker")
RECORDS_SHIPPED = Counter("fleet2ban_shipper_records_shipped", "events records acknowledged by the broker")
LIVENESS = Counter("fleet2ban_shipper_liveness_lines", "00-0015 lines read (AMPS is alive)")
REJECTED = Counter("fleet2ban_shipper_parse_rejected", "Lines that are not events, by kind", ["kind"])
DELIVERY_FAILURES = Counter(
    "fleet2ban_shipper_delivery_failures", "Records the broker did not take (retried)"
)
PRODUCER_RESTARTS = Counter("fleet2ban_shipper_producer_restarts", "Producers replaced after a fatal error")
ROTATIONS = Gauge("fleet2ban_shipper_rotations", "Rollovers (rename-and-recreate) followed")
TRUNCATIONS = Gauge("fleet2ban_shipper_truncations", "Truncations in place followed")
QUEUE_LINES = Gauge("fleet2ban_shipper_queue_lines", "Events read but not yet acknowledged")
QUEUE_RECORDS = Gauge("fleet2ban_shipper_queue_records", "events records sent but not yet acknowledged")
LAG_BYTES = Gauge("fleet2ban_shipper_lag_bytes", "Bytes of the log not yet read")
LAST_EVENT_TIME = Gauge("fleet2ban_shipper_last_event_timestamp_seconds", "Event time of the last event read")
LAST_LIVENESS_TIME = Gauge(
    "fleet2ban_shipper_last_liveness_timestamp_seconds", "Time of the last 00-0015 line"
)
FLUSH_INTERVAL = Gauge(
    "fleet2ban_shipper_flush_interval_seconds",
    "The current flush interval: shipper.flush_interval_ms, stretched under load up to max_flush_interval_ms",
)
ROUNDS = Counter("fleet2ban_shipper_rounds", "Rounds of events records handed to the producer together")
PAUSED = Gauge("fleet2ban_shipper_reading_paused", "1 while reading is paused because the queue is full")
CLOCK_REJECTED = Counter(
    "fleet2ban_shipper_clock_rejected",
    "Records (events, heartbeats) the broker refused as timestamped too far ahead (INVALID_TIMESTAMP,"
    " message.timestamp.after.max.ms): this host's clock runs ahead",
)
CLOCK_AHEAD = Gauge(
    "fleet2ban_shipper_clock_ahead",
    "1 while the broker refuses this host's records as timestamped in the future (fix its clock: NTP)",
)
