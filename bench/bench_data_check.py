"""How much the data check costs over a bare CSV load of the same file, measured in the same run.

Baseline: csv.reader + np.array(float32) on the bundled file, with no validation at all (the least any loader
does). Prints median times and the ratio check/baseline. Usage: python3 bench/bench_data_check.py [repeats]
"""

from __future__ import annotations

import csv
import io
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mlci.config import load_config
from mlci.data import check, data_files

ROOT = Path(__file__).resolve().parents[1]


def median_ms(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm the page cache and lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    config = load_config(ROOT / "mlci.toml")
    path = config.path(config.data.files[0])

    def baseline() -> np.ndarray:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
        return np.array(rows[1:], dtype=np.float32)

    base = median_ms(baseline, repeats)
    full = median_ms(lambda: check(config), repeats)
    files = median_ms(lambda: data_files(config), repeats)
    n = len(check(config))
    print(f"file: {path.name} ({n} rows), median of {repeats}")
    print(f"baseline (csv.reader + np.array, no checks): {base:7.2f} ms")
    print(f"mlci.data.check (every check):               {full:7.2f} ms   ratio {full / base:.2f}x baseline")
    print(f"mlci.data.data_files (no-op path):           {files:7.3f} ms")


if __name__ == "__main__":
    main()
