"""Prometheus metrics of the lookup service, in a registry per app, and the ASGI middleware that counts requests
(request limits: ``recsys.serving.limits``).

The per-request series (requests by path and status, latency, in-flight requests, looked-up items)
are plain numbers updated without a lock in the request path (only the event loop's thread records
them) and turned into the usual Prometheus samples at scrape time by ``PlainCounter`` and
``PlainHistogram`` (custom collectors: the same names, labels, buckets and ``_created`` samples as
``prometheus_client``'s ``Counter`` and ``Histogram``)."""

from __future__ import annotations

import math
import time
from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

if TYPE_CHECKING:
    from recsys.serving.reload import ModelHolder
    from recsys.serving.store import Store

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]
KNOWN_PATHS = ("/v1/embeddings", "/v1/score", "/v1/metadata", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _Count:
    __slots__ = ("value", "created")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class PlainCounter:
    """A labelled counter of plain floats, exported as ``prometheus_client.Counter`` exports its series."""

    def __init__(self, name: str, documentation: str, labelnames: list[str], registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.children: dict[tuple[str, ...], _Count] = {}
        registry.register(self)

    def labels(self, **labels: str) -> _Count:
        key = tuple(str(labels[n]) for n in self.labelnames)
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = _Count()
        return child

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in list(self.children.items()):
            family.add_metric(list(key), child.value, created=child.created)
        yield family


class _Buckets:
    __slots__ = ("bounds", "counts", "sum", "created")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1  # the first bound >= amount, as Histogram.observe
        self.sum += amount


class PlainHistogram:
    """A labelled histogram of plain counts, exported as ``prometheus_client.Histogram`` exports its series."""

    def __init__(self, name: str, documentation: str, labelnames: list[str], buckets: tuple[float, ...], registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.bounds = (*buckets, math.inf)
        self.children: dict[tuple[str, ...], _Buckets] = {}
        registry.register(self)

    def labels(self, **labels: str) -> _Buckets:
        key = tuple(str(labels[n]) for n in self.labelnames)
        child = self.children.get(key)
        if child is None:
            child = self.children[key] = _Buckets(self.bounds)
        return child

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in list(self.children.items()):
            total, cumulative = 0, []
            for bound, count in zip(self.bounds, list(child.counts)):
                total += count
                cumulative.append(("+Inf" if bound == math.inf else repr(float(bound)), total))
            family.add_metric(list(key), cumulative, child.sum)
            family.add_sample(f"{self.name}_created", dict(zip(self.labelnames, key)), child.created)
        yield family


class ServingMetrics:
    """The service's counters, histograms and gauges."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = PlainCounter("recsys_http_requests", "HTTP requests by path and status", ["path", "status"], registry=r)
        self.latency = PlainHistogram("recsys_http_request_seconds", "HTTP request latency", ["path"], LATENCY_BUCKETS, registry=r)
        self.active = 0  # requests being served (both fronts add and take one)
        self.inflight = Gauge("recsys_http_inflight_requests", "requests being served", registry=r)
        self.inflight.set_function(lambda: float(self.active))
        self.items = PlainCounter("recsys_lookup_items", "looked-up items: pairs, entities, scored rows", ["kind"], registry=r)
        self.model = Gauge("recsys_model_info", "the served model (value 1)", ["version", "method", "dtype"], registry=r)
        self.reloads = Counter("recsys_model_reloads", "model loads by result (loaded, refused, timeout, interface, poll)", ["result"], registry=r)
        self.reload_failures = Counter(
            "recsys_model_reload_failures",
            "versions not served, by reason (refused: unusable artifact, timeout, interface: another interface; poll: the source cannot be read)",
            ["reason"],
            registry=r,
        )
        self.reload_failing = Gauge("recsys_model_reload_failing", "1 while the source offers a version that could not be loaded", registry=r)
        self.last_failure = Gauge("recsys_model_last_reload_failure_timestamp_seconds", "unix time of the last failed load", registry=r)
        self.last_error = Gauge("recsys_model_last_reload_error_info", "the last failed load (value 1)", ["reason", "error"], registry=r)
        self.abandoned = Gauge("recsys_model_abandoned_loads", "loads past their timeout still running", registry=r)

    def watch(self, holder: "ModelHolder") -> None:
        """Report ``holder``'s reloads (as its listener) and its reload status."""
        holder.listener = self.on_reload
        self.reload_failing.set_function(lambda: float(holder.status.state == "failed"))
        self.abandoned.set_function(lambda: float(holder.status.abandoned))

    def on_reload(self, result: str, store: "Store | None", detail: str) -> None:
        self.reloads.labels(result=result).inc()
        if store is not None:
            self.set_model(store.version, store.manifest.method.name, store.manifest.dtype)
            return
        self.reload_failures.labels(reason=result).inc()
        self.last_failure.set(time.time())
        self.last_error.clear()
        error = detail[:300].encode("utf-8", "backslashreplace").decode()  # a path need not be UTF-8 (surrogate escapes)
        self.last_error.labels(reason=result, error=error).set(1)

    def set_model(self, version: str, method: str, dtype: str) -> None:
        self.model.clear()
        self.model.labels(version=version, method=method, dtype=dtype).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request (validation failures included) by path and status."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self._latency: dict[str, Any] = {}  # path label -> its histogram child (a label lookup takes a lock)
        self._requests: dict[tuple[str, int], Any] = {}  # (path label, status) -> its counter child

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        label = path if path in KNOWN_PATHS else "other"
        status = {"code": 500}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        start = time.perf_counter()
        self.metrics.active += 1
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.active -= 1
            self.observe(label, status["code"], time.perf_counter() - start)

    def observe(self, label: str, code: int, elapsed: float) -> None:
        """Count one answered request of path ``label`` (a ``KNOWN_PATHS`` entry or "other")."""
        latency = self._latency.get(label)
        if latency is None:
            latency = self._latency[label] = self.metrics.latency.labels(path=label)
        latency.observe(elapsed)
        key = (label, code)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self.metrics.requests.labels(path=label, status=str(code))
        counter.inc()
