"""Prometheus metrics of one server process, in their own registry (no global state between servers).

With worker processes (serving.workers > 1) prometheus_client's multiprocess mode keeps each worker's values
in files under PROMETHEUS_MULTIPROC_DIR (set by the supervisor before the workers start) and `render` sums
them over all workers, whichever worker answers /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model_name: str, *, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mlci_requests", "HTTP requests by route and status", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "mlci_infer_latency_seconds",
            "Infer request latency, request read to response sent",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "mlci_batch_rows", "Rows per forward pass", buckets=BATCH_BUCKETS, registry=self.registry
        )
        self.queue_depth = Gauge(
            "mlci_queue_depth",
            "Infer requests queued for a batch",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.shed = Counter("mlci_shed", "Infer requests refused with 503 (queue full)", registry=self.registry)
        self.model_version = Gauge(
            "mlci_model_version",
            "Version of the model serving by default",
            ["model"],
            registry=self.registry,
            multiprocess_mode="livemax",  # workers flip together
        ).labels(model=model_name)
        self.swaps = Counter(
            "mlci_model_swaps", "Hot swaps and rollbacks by outcome", ["action", "outcome"], registry=self.registry
        )
        self._children: dict[tuple[str, int], Counter] = {}

    def count(self, route: str, status: int) -> None:
        child = self._children.get((route, status))
        if child is None:  # label lookup is the slow part of a counter; do it once per pair
            child = self._children[(route, status)] = self.requests.labels(route=route, status=str(status))
        child.inc()

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=self.multiprocess_dir)
        return generate_latest(registry)
