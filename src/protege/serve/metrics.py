"""Prometheus metrics of one server, served at /metrics."""

from __future__ import annotations

from collections.abc import Callable


class Metrics:
    """Prometheus metrics for one server, in their own registry (several apps may share a process)."""

    def __init__(self, queue_depth: Callable[[], int], inflight: Callable[[], int]):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter(
            "protege_requests", "HTTP requests answered", ["endpoint", "status"], registry=self.registry
        )
        self.tokens = Counter("protege_tokens", "Tokens processed", ["kind"], registry=self.registry)
        self.latency = Histogram(
            "protege_request_latency_seconds",
            "Time from request to last byte",
            ["endpoint"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.batch = Histogram(
            "protege_batch_size", "Sequences per batch", buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry
        )
        Gauge("protege_queue_depth", "Requests waiting for the model", registry=self.registry).set_function(queue_depth)
        Gauge("protege_requests_active", "Requests queued or running", registry=self.registry).set_function(inflight)
