"""Real data sizes: `mlci data`, `mlci train` and the no-op on generated files of a million rows, or ten.

    python3 bench/bench_data_scale.py [--rows N [N ...]] [--repeat R]

For each size, generates in a temporary folder a CSV of the bundled schema (data/schema.toml: 64 pixel columns 0..16
and a label 0..9) with random valid values, the same rows as Parquet, and a project around each. Each command runs
as its own process; its wall time and peak RSS (os.wait4's ru_maxrss for that process; this script stays small, as
the count starts at the fork) are measured, R times interleaved, medians printed:

- `python -m mlci data` on the CSV and on the Parquet file: the whole data check (and the file's sha256);
- baseline: `pyarrow.csv.read_csv` of the same CSV, with no checks (its default type inference), in a fresh
  Python process as well, so import costs are on both sides;
- `pandas.read_csv` of the same file (pandas is in the dev extra, not a dependency of mlci);
- `mlci train` (one epoch, large batches): its peak RSS against the size of the data as float32;
- then, with that run in the registry, the no-op `mlci train` with the stat cache, against `mlci train --rehash`,
  which reads and hashes the whole file again (on the largest size: 10M rows is a 1.5 GB CSV).

Ratios are against the pyarrow baseline (data check), the float32 data (train) and --rehash (no-op), from this one
run; the check's memory at the largest size against the smallest says whether it stays flat. Timings on a shared
machine are noisy: compare ratios from one run, not runs. Files are deleted at the end (10M rows need about 2 GB of
disk and, for `mlci train`, about 5 GB of memory).
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
    """`rows` random valid rows of the bundled schema as CSV (no quotes anywhere) and the same as Parquet, written by
    pyarrow in blocks."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    header = (ROOT / "data/digits.csv").open().readline().rstrip("\n").split(",")
    rng = np.random.default_rng(seed)
    schema = pa.schema([(name, pa.int8()) for name in header[:-1]] + [(header[-1], pa.int64())])
    with path.open("wb") as f, pq.ParquetWriter(path.with_suffix(".parquet"), schema) as parquet:
        f.write((",".join(header) + "\n").encode())
        for start in range(0, rows, 250_000):
            n = min(250_000, rows - start)
            columns = [rng.integers(0, 17, n, dtype=np.int8) for _ in header[:-1]] + [rng.integers(0, 10, n)]
            table = pa.table(dict(zip(header, columns, strict=True)), schema=schema)
            pacsv.write_csv(table, f, pacsv.WriteOptions(include_header=False))
            parquet.write_table(table)


def project(folder: Path, rows: int) -> tuple[Path, Path]:
    """(the CSV project's mlci.toml, the Parquet project's), in `folder`."""
    (folder / "data").mkdir(parents=True)
    shutil.copy(ROOT / "data/schema.toml", folder / "data/schema.toml")
    # In a process of its own: numpy and pyarrow never load here, so a measured process (forked from this one)
    # does not start with their memory counted in its peak RSS.
    subprocess.run([sys.executable, __file__, "--write", str(folder / "data/big.csv"), str(rows)], check=True)
    configs = []
    for kind in ("csv", "parquet"):
        config = folder / f"{kind}.toml"
        config.write_text(f'[data]\nfiles = ["data/big.{kind}"]\nschema = "data/schema.toml"\n')
        configs.append(config)
    return configs[0], configs[1]


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
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000], help="data rows, one size or more "
                   "(default: %(default)s; 10000000 is a 1.5 GB CSV)")  # fmt: skip
    p.add_argument("--repeat", type=int, default=1, help="timed runs of each command (default: %(default)s)")
    args = p.parse_args()
    py = sys.executable
    check_rss: dict[int, float] = {}
    for rows in sorted(args.rows):
        with tempfile.TemporaryDirectory(prefix="mlci-bench-scale-") as tmp:
            last = rows == max(args.rows)
            check_rss[rows] = one_size(Path(tmp), rows, args.repeat, py, noop=last)
    if len(check_rss) > 1:
        small, big = min(check_rss), max(check_rss)
        print(f"\nmlci data peak RSS at {big:,} rows / at {small:,} rows: {check_rss[big] / check_rss[small]:.2f}x "
              f"for {big / small:.0f}x the rows")  # fmt: skip
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    return 0


def one_size(folder: Path, rows: int, repeat: int, py: str, *, noop: bool) -> float:
    """Measure and print one size; the CSV check's peak RSS in MiB."""
    start = time.perf_counter()
    config, parquet = project(folder, rows)
    csv = folder / "data/big.csv"
    print(f"\n{rows:,} rows x 65 columns: {csv.stat().st_size / 2**20:.0f} MiB of CSV, "
          f"{csv.with_suffix('.parquet').stat().st_size / 2**20:.0f} MiB of Parquet, written in "
          f"{time.perf_counter() - start:.1f} s", flush=True)  # fmt: skip
    checks = {
        "mlci data (CSV)": ([py, "-m", "mlci", "data", "--config", str(config)], "data OK"),
        "mlci data (Parquet)": ([py, "-m", "mlci", "data", "--config", str(parquet)], "data OK"),
        "pyarrow.csv.read_csv": ([py, "-c", f"import pyarrow.csv as c; c.read_csv({str(csv)!r})"], ""),
    }
    if has_pandas():
        checks["pandas.read_csv"] = ([py, "-c", f"import pandas as pd; pd.read_csv({str(csv)!r})"], "")
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in checks}
    for _ in range(repeat):  # interleaved, so load changes hit all alike
        for name, (cmd, say) in checks.items():
            samples[name].append(measure(cmd, folder, must_say=say))

    train = [py, "-m", "mlci", "train", "--config", str(config), *SETUP]
    samples["mlci train (1 epoch)"] = [measure(train, folder, expect=frozenset({0, 1}))]
    noops = {"mlci train (no-op)": train, "mlci train --rehash (no-op)": [*train, "--rehash"]} if noop else {}
    for name in noops:
        samples[name] = []
    for _ in range(repeat):
        for name, cmd in noops.items():
            samples[name].append(measure(cmd, folder, expect=frozenset({0, 1}), must_say="up to date: run"))

    wall = {k: statistics.median(s[0] for s in v) for k, v in samples.items()}
    rss = {k: statistics.median(s[1] for s in v) for k, v in samples.items()}
    base = "pyarrow.csv.read_csv"
    print(f"median of {repeat} run(s) each; wall time and peak RSS of the process:")
    for name in checks:
        print(f"  {name:<28} {wall[name]:7.2f} s  {rss[name]:7.0f} MiB   = {wall[name] / wall[base]:.2f}x the time, "
              f"{rss[name] / rss[base]:.2f}x the memory of {base}")  # fmt: skip
    if "pandas.read_csv" not in checks:
        print("  pandas.read_csv              skipped: pandas is not installed (pip install -e '.[dev]')")
    name, data_mib = "mlci train (1 epoch)", rows * 64 * 4 / 2**20
    print(f"  {name:<28} {wall[name]:7.2f} s  {rss[name]:7.0f} MiB   = {rss[name] / data_mib:.2f}x the data as "
          f"float32 ({data_mib:.0f} MiB)")  # fmt: skip
    full = "mlci train --rehash (no-op)"
    for name in noops:
        print(f"  {name:<28} {wall[name]:7.2f} s  {rss[name]:7.0f} MiB   = {wall[name] / wall[full]:.3f}x {full}")
    return rss["mlci data (CSV)"]


if __name__ == "__main__":
    raise SystemExit(main())
