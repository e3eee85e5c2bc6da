"""The latency histogram (PNG) that the run report embeds."""

from __future__ import annotations

import math
from pathlib import Path

from mlci.loadtest.figures import Figures
from mlci.loadtest.slo import Check


def latency_histogram(figures: Figures, checks: list[Check], path: Path, title: str) -> Path:
    """Requests per latency bucket, with the measured p50/p95/p99 and the SLO's p95 limit marked."""
    import matplotlib

    matplotlib.use("Agg")  # no display on runners
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4), dpi=110)
    try:
        if figures.histogram:
            latencies = list(figures.histogram)
            counts = list(figures.histogram.values())
            low, high = max(min(latencies), 0.5), max(max(latencies), 1.0)
            if high / low > 50:  # long tail: log-spaced bins keep the body of the distribution readable
                bins = [low * (high / low) ** (i / 40) for i in range(41)]
                ax.set_xscale("log")
            else:
                bins = min(60, max(5, len(latencies)))
            ax.hist(latencies, bins=bins, weights=counts, color="#4c72b0")
        else:
            ax.text(0.5, 0.5, "no request completed", ha="center", va="center", transform=ax.transAxes)
        for label, value, style in (("p50", figures.p50_ms, ":"), ("p95", figures.p95_ms, "--"),
                                    ("p99", figures.p99_ms, "-.")):  # fmt: skip
            if value is not None and value > 0:
                ax.axvline(value, color="black", linestyle=style, linewidth=1, label=f"{label} {value:g} ms")
        limit = next((c.limit for c in checks if c.name == "p95_ms"), None)
        if limit is not None and math.isfinite(limit):
            ax.axvline(limit, color="#c44e52", linewidth=1.5, label=f"p95 limit {limit:g} ms")
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("requests")
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
