"""Prometheus metrics of one server process, in their own registry (no global state between servers).

With worker processes (serving.workers > 1) each worker keeps its own plain metrics (prometheus_client's
multiprocess mode doubled the cost of a request's metric updates, measured) and the worker that answers
/metrics gets every worker's samples through the supervisor (`gather`) and sums them (`merge`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric

LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model_name: str) -> None:
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
        self.queue_depth = Gauge("mlci_queue_depth", "Infer requests queued for a batch", registry=self.registry)
        self.shed = Counter("mlci_shed", "Infer requests refused with 503 (queue full)", registry=self.registry)
        self.model_version = Gauge(
            "mlci_model_version", "Version of the model serving by default", ["model"], registry=self.registry
        ).labels(model=model_name)
        self.swaps = Counter(
            "mlci_model_swaps", "Hot swaps and rollbacks by outcome", ["action", "outcome"], registry=self.registry
        )
        self._children: dict[tuple[str, int], Counter] = {}
        # Set in worker processes: every worker's samples (this one's included), for /metrics to sum.
        self.gather: Callable[[], Awaitable[list[list[Metric]]]] | None = None

    def count(self, route: str, status: int) -> None:
        child = self._children.get((route, status))
        if child is None:  # label lookup is the slow part of a counter; do it once per pair
            child = self._children[(route, status)] = self.requests.labels(route=route, status=str(status))
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def samples(self) -> list[Metric]:
        return list(self.registry.collect())

    async def exposition(self) -> bytes:
        """The /metrics text: this process's, or the sum over every worker process."""
        if self.gather is None:
            return self.render()
        return merge(await self.gather())


_MAX_GAUGES = frozenset({"mlci_model_version"})  # the same in every worker: not summed


def merge(per_process: list[list[Metric]]) -> bytes:
    """Several processes' metric families as one exposition: samples with the same name and labels summed
    (counters, histograms, the queue depth); the model version and `_created` timestamps are not sums."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for collected in per_process:
        for family in collected:
            if family.name not in families:
                families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                values[family.name] = {}
            merged = values[family.name]
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                old = merged.get(key)
                if old is None:
                    merged[key] = sample.value
                elif sample.name.endswith("_created"):
                    merged[key] = min(old, sample.value)
                elif family.name in _MAX_GAUGES:
                    merged[key] = max(old, sample.value)
                else:
                    merged[key] = old + sample.value
    for name, family in families.items():
        for (sample_name, labels), value in values[name].items():
            family.add_sample(sample_name, dict(labels), value)
    return generate_latest(_Families(list(families.values())))  # type: ignore[arg-type]


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Any:
        return self.families
