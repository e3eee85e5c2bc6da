"""The run's figures, read back from Locust's own outputs so that summary, CSV and HTML agree.

Latency percentiles, counts and throughput come from the Aggregated row of `locust_stats.csv`; the
latency distribution (for the histogram) from `locust.json`, whose response-time buckets are Locust's
(1 ms below 100 ms, then about two significant digits).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mlci.errors import MlciError


@dataclass(frozen=True)
class Figures:
    requests: int
    failures: int
    rps: float
    p50_ms: float | None  # None when no request completed
    p95_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    max_ms: float | None
    histogram: dict[int, int] = field(default_factory=dict)  # latency bucket (ms) -> requests
    errors: list[dict[str, object]] = field(default_factory=list)  # {"error", "occurrences"}, most first

    @property
    def error_ratio(self) -> float:
        return self.failures / self.requests if self.requests else 1.0


def _number(row: dict[str, str], column: str, file: Path) -> float | None:
    value = row.get(column)
    if value in (None, "", "N/A"):
        return None
    try:
        return float(value)
    except ValueError:
        raise MlciError(f"{file}: column {column!r} = {value!r} is not a number") from None


def read_figures(
    stats_csv: Path, json_file: Path | None = None, failures_csv: Path | None = None, *, name: str = "Aggregated"
) -> Figures:
    """The figures of one row of the stats: `Aggregated` (every request) or one request name."""
    try:
        with open(stats_csv, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise MlciError(f"{stats_csv}: Locust wrote no stats") from None
    total = next((r for r in rows if r.get("Name") == name), None)
    if total is None:
        raise MlciError(f"{stats_csv}: no {name!r} row")
    return Figures(
        requests=int(_number(total, "Request Count", stats_csv) or 0),
        failures=int(_number(total, "Failure Count", stats_csv) or 0),
        rps=_number(total, "Requests/s", stats_csv) or 0.0,
        p50_ms=_number(total, "50%", stats_csv),
        p95_ms=_number(total, "95%", stats_csv),
        p99_ms=_number(total, "99%", stats_csv),
        mean_ms=_number(total, "Average Response Time", stats_csv),
        max_ms=_number(total, "Max Response Time", stats_csv),
        histogram=read_histogram(json_file, None if name == "Aggregated" else name) if json_file else {},
        errors=read_errors(failures_csv) if failures_csv else [],
    )


def read_histogram(json_file: Path, name: str | None = None) -> dict[int, int]:
    """Locust's response-time buckets of one request name, or summed over every name (None)."""
    try:
        entries = json.loads(json_file.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    counts: Counter[int] = Counter()
    for entry in entries:
        if name is not None and entry.get("name") != name:
            continue
        for bucket, n in (entry.get("response_times") or {}).items():
            counts[int(float(bucket))] += int(n)
    return dict(sorted(counts.items()))


def read_errors(failures_csv: Path, limit: int = 10) -> list[dict[str, object]]:
    try:
        with open(failures_csv, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        return []
    errors = [{"error": r.get("Error", ""), "occurrences": int(r.get("Occurrences") or 0)} for r in rows]
    return sorted(errors, key=lambda e: -int(e["occurrences"]))[:limit]  # type: ignore[call-overload]
