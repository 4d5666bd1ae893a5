"""enforcer.metrics.observe_many: the same histogram as observing each value, in one increment per bucket."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from enforcer.metrics import observe_many


def samples(h: Histogram) -> dict[str, float]:
    return {
        f"{s.name}{s.labels}": s.value
        for m in h.collect()
        for s in m.samples
        if not s.name.endswith("_created")
    }


def test_observe_many_equals_observe_one_by_one() -> None:
    buckets = (0.001, 0.005, 0.01, 0.1, 1)
    one = Histogram("one", "h", buckets=buckets, registry=CollectorRegistry())
    many = Histogram("many", "h", buckets=buckets, registry=CollectorRegistry())
    values = [0.0, 0.0005, 0.001, 0.0010001, 0.005, 0.007, 0.01, 0.5, 1.0, 1.5, 30.0]
    for v in values:
        one.observe(v)
    observe_many(many, values)
    observe_many(many, [])  # nothing: no change
    got = {k.replace("many", "one", 1): v for k, v in samples(many).items()}
    assert got == samples(one)
