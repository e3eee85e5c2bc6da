"""How much the data check costs over a bare CSV load of the same file, measured in the same run.

Baseline: csv.reader + np.array(float32) on the same file, with no validation at all (the least any loader
does). Two files: the bundled digits (few distinct values per column) and a generated real-valued one
(every value distinct: the checker's per-cell path). Prints median times and the ratio check/baseline.
Usage: python3 bench/bench_data_check.py [repeats]
"""

from __future__ import annotations

import csv
import io
import sys
import tempfile
from pathlib import Path

import numpy as np

from mlci.config import Config, load_config
from mlci.data import check, data_files
from timing import median_ms

ROOT = Path(__file__).resolve().parents[1]


def compare(label: str, config: Config, repeats: int) -> None:
    path = config.path(config.data.files[0])

    def baseline() -> np.ndarray:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))
        return np.array(rows[1:], dtype=np.float32)

    base = median_ms(baseline, repeats)
    full = median_ms(lambda: check(config), repeats)
    ds = check(config)
    print(f"{label}: {len(ds)} rows x {len(ds.features)} features, median of {repeats}")
    print(f"  baseline (csv.reader + np.array, no checks): {base:8.2f} ms")
    print(f"  mlci.data.check (every check):               {full:8.2f} ms   ratio {full / base:.2f}x baseline")


def real_valued(folder: Path, rows: int = 20_000, features: int = 20) -> Config:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, features))
    names = [f"f{i}" for i in range(features)]
    lines = [",".join([*names, "y"])] + [",".join(map(repr, r.tolist())) + f",{i % 3}" for i, r in enumerate(x)]
    (folder / "real.csv").write_text("\n".join(lines) + "\n")
    columns = "\n".join(f"{n} = {{ min = -100.0, max = 100.0 }}" for n in names)
    (folder / "schema.toml").write_text(f'[label]\ncolumn = "y"\nclasses = [0, 1, 2]\n[features]\n{columns}\n')
    (folder / "mlci.toml").write_text('[data]\nfiles = ["real.csv"]\nschema = "schema.toml"\n')
    return load_config(folder / "mlci.toml")


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    config = load_config(ROOT / "mlci.toml")
    compare("bundled digits.csv", config, repeats)
    files = median_ms(lambda: data_files(config), repeats)
    print(f"  mlci.data.data_files (no-op path):           {files:8.3f} ms")
    with tempfile.TemporaryDirectory() as folder:
        compare("generated real-valued CSV", real_valued(Path(folder)), max(3, repeats // 10))


if __name__ == "__main__":
    main()
