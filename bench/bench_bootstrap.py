"""The vectorized paired bootstrap of mlci.evaluate against a plain per-resample loop, measured in the same run.

Baseline: for each resample, index the rows and call `point_metrics` (a confusion matrix per resample), the
obvious way to write it. Both compute accuracy, macro-F1 and per-class precision/recall/F1 for two models on
the same resamples. Prints median times and the ratio loop/vectorized, and checks the two agree.
Usage: python3 bench/bench_bootstrap.py [rows] [resamples] [repeats]
"""

from __future__ import annotations

import sys

import numpy as np

from mlci.evaluate import bootstrap, point_metrics
from timing import median_ms

K = 10


def loop(y: np.ndarray, preds: dict[str, np.ndarray], resamples: int, seed: int) -> dict[str, np.ndarray]:
    idx = np.random.default_rng(seed).integers(0, len(y), size=(resamples, len(y)))
    out = {name: np.empty(resamples) for name in preds}
    for j in range(resamples):
        for name, pred in preds.items():
            out[name][j] = point_metrics(y[idx[j]], pred[idx[j]], K)["macro_f1"]
    return out


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 360
    resamples = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    rng = np.random.default_rng(0)
    y = rng.integers(0, K, rows)
    preds = {
        name: np.where(rng.random(rows) < acc, y, rng.integers(0, K, rows)) for name, acc in (("a", 0.95), ("b", 0.9))
    }

    fast = bootstrap(y, preds, K, resamples=resamples, seed=1)
    slow = loop(y, preds, resamples, 1)
    for name in preds:
        assert np.allclose(fast[name].macro_f1, slow[name]), "vectorized and loop bootstrap disagree"

    t_fast = median_ms(lambda: bootstrap(y, preds, K, resamples=resamples, seed=1), repeats)
    t_loop = median_ms(lambda: loop(y, preds, resamples, 1), repeats)
    print(f"paired bootstrap, 2 models, {rows} rows, {K} classes, {resamples} resamples (median of {repeats}):")
    print(f"  per-resample loop (baseline) {t_loop:9.1f} ms")
    print(f"  vectorized (mlci)            {t_fast:9.1f} ms")
    print(f"  speedup                      {t_loop / t_fast:9.1f}x")


if __name__ == "__main__":
    main()
