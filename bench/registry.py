"""Registry throughput: writes per second on SQLite and on PostgreSQL with 1 and 4 concurrent writer processes.

    python3 bench/registry.py [--rounds 200] [--writers 1 4]

Each writer process does `rounds` rounds of what a training run does to the registry: create_run (record the
run), log_metrics per epoch and the final ones, finish_run, promote -- 5 registry writes a round, each its own
transaction. The writers start together (a go file) and the rate is all their writes over the time from the
go to the last writer's end. PostgreSQL is a throw-away server this script starts on 127.0.0.1 (Debian's
postgresql 15, as the tests do: tests/pg_cluster.py) with fsync off, so both back ends run without a disk
flush per commit (SQLite: WAL, synchronous=NORMAL). The baseline is SQLite with one writer, measured in the
same run; every figure is printed with its ratio to it. On a shared machine the figures are noisy: compare
ratios from one run, not runs.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from mlci.registry import Registry  # noqa: E402
from pg_cluster import PgCluster, available  # noqa: E402

WRITES_PER_ROUND = 5

WRITER = """
import sys, time
from pathlib import Path
from mlci.registry import Registry

where, go, name, rounds = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
with Registry(where) as registry:
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.0005)
    for i in range(rounds):
        run = registry.create_run(f"{name}-{i}", params={"writer": name, "i": i}, environment={})
        registry.log_metrics(run.id, {"train_loss": 1.0 / (i + 1), "train_accuracy": 0.5}, step=1)
        registry.log_metrics(run.id, {"eval_accuracy": 0.9, "eval_macro_f1": 0.9})
        registry.finish_run(run.id)
        registry.promote(run.id, evidence={"writer": name}, hosts=[name])
    print(time.time(), flush=True)
"""


def writes_per_second(where: str | Path, writers: int, rounds: int, scratch: Path) -> float:
    Registry(where).close()  # created (and migrated) before the clock starts
    go = scratch / f"go-{time.monotonic_ns()}"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(where), str(go), f"w{n}", str(rounds)], stdout=subprocess.PIPE, text=True
        )
        for n in range(writers)
    ]
    for p in procs:
        if p.stdout is None or p.stdout.readline() != "ready\n":
            raise SystemExit(f"a writer did not start (exit {p.wait()})")
    start = time.time()
    go.touch()
    ends = []
    for p in procs:
        out, _ = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"a writer failed (exit {p.returncode})")
        ends.append(float(out.split()[-1]))
    with Registry(where) as registry:  # nothing lost, or the figure means nothing
        assert len(registry.runs()) == writers * rounds and len(registry.ledger()) == writers * rounds
    return writers * rounds * WRITES_PER_ROUND / (max(ends) - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200, help="rounds per writer (default 200)")
    parser.add_argument("--writers", type=int, nargs="+", default=[1, 4], help="writer counts (default 1 4)")
    args = parser.parse_args()
    why = available()
    if why is not None:
        print(f"cannot start PostgreSQL: {why}", file=sys.stderr)
        return 2
    server = PgCluster().start()
    try:
        with tempfile.TemporaryDirectory(prefix="mlci-bench-registry-") as tmp:
            scratch = Path(tmp)
            results: dict[tuple[str, int], float] = {}
            for writers in args.writers:
                sqlite_file = scratch / f"registry-{writers}.db"
                results["sqlite", writers] = writes_per_second(sqlite_file, writers, args.rounds, scratch)
                results["postgresql", writers] = writes_per_second(server.new_database(), writers, args.rounds, scratch)
    finally:
        server.stop()
    base = results["sqlite", args.writers[0]]
    print(f"registry writes/s ({args.rounds} rounds x {WRITES_PER_ROUND} writes per writer; baseline: sqlite, "
          f"{args.writers[0]} writer)")  # fmt: skip
    print(f"{'back end':<12}{'writers':>8}{'writes/s':>12}{'x baseline':>12}")
    for (backend, writers), rate in results.items():
        print(f"{backend:<12}{writers:>8}{rate:>12.0f}{rate / base:>12.2f}")
    for writers in args.writers:
        ratio = results["postgresql", writers] / results["sqlite", writers]
        print(f"postgresql / sqlite at {writers} writer(s): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
