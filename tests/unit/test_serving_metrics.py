"""The plain per-request counters export the samples ``prometheus_client``'s Counter and Histogram
export for the same observations: names, labels, bucket counts, sums and ``_created`` series."""

from __future__ import annotations

import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from recsys.serving.metrics import LATENCY_BUCKETS, PlainCounter, PlainHistogram, ServingMetrics


def _samples(registry: CollectorRegistry) -> tuple[dict, set]:
    """``{(name, labels): value}`` of every sample but the ``_created`` ones, and the ``_created`` keys."""
    values, created = {}, set()
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            (created.add(key) if s.name.endswith("_created") else values.__setitem__(key, s.value))
    return values, created


def test_plain_series_equal_prometheus_clients():
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    plain = PlainCounter("recsys_http_requests", "HTTP requests by path and status", ["path", "status"], ours)
    hist = PlainHistogram("recsys_http_request_seconds", "HTTP request latency", ["path"], LATENCY_BUCKETS, ours)
    counter = Counter("recsys_http_requests", "HTTP requests by path and status", ["path", "status"], registry=theirs)
    reference = Histogram("recsys_http_request_seconds", "HTTP request latency", ["path"], buckets=LATENCY_BUCKETS, registry=theirs)
    rng = random.Random(0)
    for _ in range(3000):
        path, status = rng.choice(["/v1/embeddings", "other"]), rng.choice([200, 400, 503])
        elapsed = rng.choice([*LATENCY_BUCKETS, 0.0, 7.5, rng.random() * 3])  # the bounds themselves: a value on a bound counts in it
        plain.labels(path=path, status=status).inc()
        counter.labels(path=path, status=str(status)).inc()
        hist.labels(path=path).observe(elapsed)
        reference.labels(path=path).observe(elapsed)
    ours_values, ours_created = _samples(ours)
    their_values, their_created = _samples(theirs)
    assert ours_created == their_created, ours_created ^ their_created
    assert len(ours_created) == 8
    assert ours_values.keys() == their_values.keys()
    for key, value in their_values.items():
        assert abs(ours_values[key] - value) <= 1e-9 * max(1.0, abs(value)), key


def test_service_metrics_render_the_inflight_gauge_and_counts():
    metrics = ServingMetrics()
    metrics.active += 2
    metrics.items.labels(kind="pairs").inc(512)
    text = metrics.render().decode()
    assert "recsys_http_inflight_requests 2.0" in text
    assert 'recsys_lookup_items_total{kind="pairs"} 512.0' in text
