"""Worker processes' metrics summed into one /metrics text (what any worker answers with serving.workers > 1)."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families

from mlci.serve.metrics import Metrics, merge


def _values(text: bytes) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }


def test_counters_and_histograms_add_up_and_the_model_version_is_not_a_sum() -> None:
    workers = [Metrics("digits") for _ in range(3)]
    for i, m in enumerate(workers):
        for _ in range(i + 1):
            m.count("infer", 200)
            m.latency.observe(0.0004)
        m.count("infer", 400)
        m.queue_depth.set(i)
        m.model_version.set(2.0)
    merged = _values(merge([m.samples() for m in workers]))
    assert merged[("mlci_requests_total", (("route", "infer"), ("status", "200")))] == 6
    assert merged[("mlci_requests_total", (("route", "infer"), ("status", "400")))] == 3
    assert merged[("mlci_infer_latency_seconds_count", ())] == 6
    assert merged[("mlci_infer_latency_seconds_bucket", (("le", "0.0005"),))] == 6
    assert merged[("mlci_infer_latency_seconds_bucket", (("le", "0.0001"),))] == 0
    assert merged[("mlci_queue_depth", ())] == 0 + 1 + 2
    assert merged[("mlci_model_version", (("model", "digits"),))] == 2.0
    created = [v for (name, _), v in merged.items() if name == "mlci_requests_created"]
    assert created and all(time.time() - 3600 < v <= time.time() for v in created)  # a timestamp, not a sum
