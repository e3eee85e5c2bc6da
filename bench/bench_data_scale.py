"""Real data sizes: `mlci data` and the no-op `mlci train` on a generated file of a million rows (or ten).

    python3 bench/bench_data_scale.py [--rows N] [--ten-million] [--repeat R]

Generates, in a temporary folder, a CSV of the bundled schema (data/schema.toml: 64 pixel columns 0..16 and a
label 0..9) with random valid values, and a project around it. Each command runs as its own process; its wall
time and peak RSS (os.wait4's ru_maxrss for that process; this script stays small, as the count starts at the fork)
are measured, R times interleaved, medians printed:

- `python -m mlci data`: the whole data check (and the file's sha256);
- baseline: `pyarrow.csv.read_csv` of the same file, with no checks (its default type inference), in a fresh
  Python process as well, so import costs are on both sides;
- `pandas.read_csv` of the same file, when pandas is installed (it is not a dependency of mlci);
- after one real `mlci train` (one epoch, large batches: the run the no-op finds), the no-op `mlci train`
  with the stat cache, against `mlci train --rehash`, which reads and hashes the whole file again.

Ratios are against the pyarrow baseline (data check) and against --rehash (no-op), from this one run. Timings on a
shared machine are noisy: compare ratios from one run, not runs.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OK = frozenset({0})
SETUP = ["train.epochs=1", "train.batch_size=4096", "train.device=cpu", "evaluate.bootstrap=100"]


def generate(path: Path, rows: int, seed: int = 0) -> None:
    """`rows` random valid rows of the bundled schema, written by pyarrow in blocks (no quotes anywhere)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv

    header = (ROOT / "data/digits.csv").open().readline().rstrip("\n").split(",")
    rng = np.random.default_rng(seed)
    with path.open("wb") as f:
        f.write((",".join(header) + "\n").encode())
        for start in range(0, rows, 250_000):
            n = min(250_000, rows - start)
            columns = [rng.integers(0, 17, n, dtype=np.int8) for _ in header[:-1]] + [rng.integers(0, 10, n)]
            table = pa.table(dict(zip(header, columns, strict=True)))
            pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=False))


def project(folder: Path, rows: int) -> Path:
    (folder / "data").mkdir()
    shutil.copy(ROOT / "data/schema.toml", folder / "data/schema.toml")
    # In a process of its own: numpy and pyarrow never load here, so a measured process (forked from this one)
    # does not start with their memory counted in its peak RSS.
    subprocess.run([sys.executable, __file__, "--write", str(folder / "data/big.csv"), str(rows)], check=True)
    (folder / "mlci.toml").write_text('[data]\nfiles = ["data/big.csv"]\nschema = "data/schema.toml"\n')
    return folder / "mlci.toml"


def measure(cmd: list[str], cwd: Path, expect: frozenset[int] = OK, must_say: str = "") -> tuple[float, float]:
    """(wall seconds, peak RSS in MiB) of one process running `cmd`."""
    with tempfile.TemporaryFile() as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read().decode(errors="replace")
    if proc.returncode not in expect or must_say not in text:
        raise SystemExit(f"bench: {' '.join(cmd)} exited {proc.returncode}:\n{text[-2000:]}")
    return wall, usage.ru_maxrss / 1024  # Linux: KiB


def has_pandas() -> bool:
    done = subprocess.run([sys.executable, "-c", "import pandas"], capture_output=True, check=False)
    return done.returncode == 0


def main() -> int:
    if sys.argv[1:2] == ["--write"]:
        generate(Path(sys.argv[2]), int(sys.argv[3]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="data rows to generate (default: %(default)s)")
    p.add_argument("--ten-million", action="store_true", help="10,000,000 rows (about 1.6 GB of CSV)")
    p.add_argument("--repeat", type=int, default=1, help="timed runs of each command (default: %(default)s)")
    args = p.parse_args()
    rows = 10_000_000 if args.ten_million else args.rows
    py = sys.executable

    with tempfile.TemporaryDirectory(prefix="mlci-bench-scale-") as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        config = project(folder, rows)
        csv = folder / "data/big.csv"
        print(f"{rows:,} rows x 65 columns, {csv.stat().st_size / 2**20:.0f} MiB of CSV, written in "
              f"{time.perf_counter() - start:.1f} s ({folder})")  # fmt: skip
        checks = {
            "mlci data": ([py, "-m", "mlci", "data", "--config", str(config)], "data OK"),
            "pyarrow.csv.read_csv": ([py, "-c", f"import pyarrow.csv as c; c.read_csv({str(csv)!r})"], ""),
        }
        if has_pandas():
            checks["pandas.read_csv"] = ([py, "-c", f"import pandas as pd; pd.read_csv({str(csv)!r})"], "")
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in checks}
        for _ in range(args.repeat):  # interleaved, so load changes hit all alike
            for name, (cmd, say) in checks.items():
                samples[name].append(measure(cmd, folder, must_say=say))

        print("training once so that a run exists ...", flush=True)
        start = time.perf_counter()
        train = [py, "-m", "mlci", "train", "--config", str(config), *SETUP]
        measure(train, folder, expect=frozenset({0, 1}))
        print(f"  trained in {time.perf_counter() - start:.1f} s")
        noops = {"mlci train (no-op)": train, "mlci train --rehash (no-op)": [*train, "--rehash"]}
        for name in noops:
            samples[name] = []
        for _ in range(args.repeat):
            for name, cmd in noops.items():
                samples[name].append(measure(cmd, folder, expect=frozenset({0, 1}), must_say="up to date: run"))

    wall = {k: statistics.median(s[0] for s in v) for k, v in samples.items()}
    rss = {k: statistics.median(s[1] for s in v) for k, v in samples.items()}
    base = "pyarrow.csv.read_csv"
    print(f"\nmedian of {args.repeat} run(s) each; wall time and peak RSS of the process:")
    for name in checks:
        print(f"  {name:<28} {wall[name]:7.2f} s  {rss[name]:7.0f} MiB   = {wall[name] / wall[base]:.2f}x the time, "
              f"{rss[name] / rss[base]:.2f}x the memory of {base}")  # fmt: skip
    if "pandas.read_csv" not in checks:
        print("  pandas.read_csv              skipped: pandas is not installed (it is not a dependency of mlci)")
    full = "mlci train --rehash (no-op)"
    for name in noops:
        print(f"  {name:<28} {wall[name]:7.2f} s  {rss[name]:7.0f} MiB   = {wall[name] / wall[full]:.3f}x {full}")
    print(f"  load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
