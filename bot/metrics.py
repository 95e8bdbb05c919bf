"""Prometheus metrics of one core: jobs, upstream calls, latencies, queue, spend, adapters.

Each core owns its own ``CollectorRegistry`` (never prometheus-client's global one), so tests and several cores in
one process never see each other's numbers. The lifecycle reaches the metrics through a ``RequestTrace`` that
``adapters.common.lifecycle.answer`` opens for each request and the job service binds to its platform, kind and
this core; everything else calls the ``Metrics`` methods where the work happens.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bot.errors import (
    ImageBotError,
    ProviderResponseError,
    QuotaExhaustedError,
    RateLimitedError,
    SafetyRefusalError,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UPSTREAM_OUTCOMES = (
    "ok",
    "refused_by_safety",
    "rate_limited",
    "quota",
    "upstream_5xx",
    "transport",  # no answer: connection refused or cut, timeout
    "bad_response",  # a 2xx that held no usable image
    "rejected",  # any other 4xx: invalid request, key, permission, unknown model
)
FAST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0)  # acks (Discord allows 3 s)
SLOW_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)  # queue, upstream, jobs

AdapterStates = Callable[[], Mapping[str, str]]


def upstream_outcome(error: ImageBotError | None, status: int | None) -> str:
    """The outcome class of one upstream attempt: ``error`` None is a success, ``status`` None is no answer."""
    if error is None:
        return "ok"
    if isinstance(error, SafetyRefusalError):
        return "refused_by_safety"
    if isinstance(error, QuotaExhaustedError):  # before 429: an exhausted quota also answers 429
        return "quota"
    if isinstance(error, RateLimitedError):
        return "rate_limited"
    if isinstance(error, ProviderResponseError) and status is None:
        return "bad_response"
    if status is None:
        return "transport"
    if status >= 500:
        return "upstream_5xx"
    return "rejected"


class Metrics:
    """Every metric imagebot exports, on a registry of its own; ``exposition`` is the /metrics body."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.jobs = Counter(
            "imagebot_jobs",
            "Requests answered, by platform, kind and final status",
            ["platform", "kind", "status"],
            registry=registry,
        )
        self.upstream_calls = Counter(
            "imagebot_upstream_calls",
            "Upstream HTTP attempts by model and outcome class",
            ["model", "outcome"],
            registry=registry,
        )
        self.retries = Counter("imagebot_upstream_retries", "Upstream attempts repeated", ["model"], registry=registry)
        self.backoffs = Counter(
            "imagebot_upstream_429_backoffs", "Retries that waited after a 429", ["model"], registry=registry
        )
        self.ack_seconds = Histogram(
            "imagebot_ack_seconds",
            "Time to acknowledge a request",
            ["platform"],
            buckets=FAST_BUCKETS,
            registry=registry,
        )
        self.queue_wait_seconds = Histogram(
            "imagebot_queue_wait_seconds", "Time waiting for a turn", buckets=SLOW_BUCKETS, registry=registry
        )
        self.upstream_seconds = Histogram(
            "imagebot_upstream_seconds",
            "Provider call time, retries included",
            ["model"],
            buckets=SLOW_BUCKETS,
            registry=registry,
        )
        self.delivery_seconds = Histogram(
            "imagebot_delivery_seconds",
            "Time to post a result",
            ["platform"],
            buckets=SLOW_BUCKETS,
            registry=registry,
        )
        self.total_seconds = Histogram(
            "imagebot_request_seconds",
            "Request time, received to answered",
            ["platform"],
            buckets=SLOW_BUCKETS,
            registry=registry,
        )
        self.images = Counter("imagebot_images", "Images made", ["platform"], registry=registry)
        self.spend = Counter("imagebot_spend_dollars", "Upstream spend in USD", ["platform"], registry=registry)
        self.queue_length = Gauge("imagebot_queue_length", "Jobs waiting for a turn", registry=registry)
        self.running = Gauge("imagebot_running_jobs", "Jobs running now", registry=registry)
        self._adapters = _AdapterCollector()
        registry.register(self._adapters)

    # --- read at scrape time -------------------------------------------------------------------------------

    def watch_queue(self, queue_length: Callable[[], int], running: Callable[[], int]) -> None:
        self.queue_length.set_function(queue_length)
        self.running.set_function(running)

    def watch_adapters(self, states: AdapterStates) -> None:
        """``states`` answers {adapter name: state} at each scrape."""
        self._adapters.states = states

    def exposition(self) -> bytes:
        """The Prometheus text format of everything."""
        return generate_latest(self.registry)

    # --- hooks ---------------------------------------------------------------------------------------------

    def upstream_attempt(self, model: str, error: ImageBotError | None, status: int | None) -> None:
        self.upstream_calls.labels(model, upstream_outcome(error, status)).inc()

    def upstream_retry(self, model: str, status: int | None) -> None:
        self.retries.labels(model).inc()
        if status == 429:
            self.backoffs.labels(model).inc()

    def paid(self, platform: str, images: int, cost: float | None) -> None:
        self.images.labels(platform).inc(images)
        if cost:
            self.spend.labels(platform).inc(cost)


class _AdapterCollector(Collector):
    """Adapter connection state, read from the adapters at each scrape."""

    def __init__(self) -> None:
        self.states: AdapterStates = dict

    def collect(self) -> Iterable[Metric]:
        connected = GaugeMetricFamily(
            "imagebot_adapter_connected", "1 when the adapter is connected to its platform", labels=["adapter"]
        )
        state = GaugeMetricFamily(
            "imagebot_adapter_state", "The adapter's state (1 for the current one)", labels=["adapter", "state"]
        )
        for name, value in self.states().items():
            connected.add_metric([name], 1.0 if value == "connected" else 0.0)
            state.add_metric([name, value], 1.0)
        return [connected, state]

    def describe(self) -> Iterable[Metric]:
        return []


# --- one request's trace ---------------------------------------------------------------------------------------


@dataclass
class RequestTrace:
    """One request, from its listener to its answer; bound to a core's metrics once the job service sees it."""

    started: float
    metrics: Metrics | None = None
    platform: str = "unknown"
    kind: str = "unknown"
    acked: float | None = None

    def bind(self, metrics: Metrics, platform: str, kind: str) -> None:
        self.metrics, self.platform, self.kind = metrics, platform, kind

    def acknowledged(self) -> None:
        """The platform has our acknowledgement (Discord's defer came back)."""
        if self.acked is None:
            self.acked = time.monotonic()

    def finished(self, status: str, *, delivery_started: float | None = None) -> None:
        """The request's one answer is out; ``status`` is its final status (``delivered``, an error's kind...)."""
        metrics = self.metrics
        if metrics is None:  # never reached the job service: nothing of a core to count it in
            return
        now = time.monotonic()
        metrics.jobs.labels(self.platform, self.kind, status).inc()
        if self.acked is not None:
            metrics.ack_seconds.labels(self.platform).observe(self.acked - self.started)
        if delivery_started is not None:
            metrics.delivery_seconds.labels(self.platform).observe(now - delivery_started)
        metrics.total_seconds.labels(self.platform).observe(now - self.started)


_current: ContextVar[RequestTrace | None] = ContextVar("imagebot_request_trace", default=None)


@contextlib.contextmanager
def request_trace() -> Iterator[RequestTrace]:
    """The trace of the request this task is answering, for as long as it is answered (the lifecycle's)."""
    trace = RequestTrace(time.monotonic())
    token = _current.set(trace)
    try:
        yield trace
    finally:
        _current.reset(token)


def current_request() -> RequestTrace | None:
    return _current.get()


def acknowledged() -> None:
    """Adapters call this once the platform has the request's acknowledgement."""
    trace = _current.get()
    if trace is not None:
        trace.acknowledged()
