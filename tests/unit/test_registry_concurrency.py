"""Two real processes writing one registry at once lose nothing and corrupt nothing (SQLite WAL + BEGIN
IMMEDIATE). Each writer does N rounds of create_run, log_metric (final and per step), finish_run, promote."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from mlci.registry import Registry

ROUNDS = 200
WRITERS = 2

WRITER = """
import sys
from mlci.registry import Registry

path, name, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Registry(path) as registry:
    for i in range(rounds):
        run = registry.create_run(f"{name}-{i}", params={"writer": name, "i": i}, environment={})
        registry.log_metric(run.id, "train_loss", float(i), step=1)
        registry.log_metric(run.id, "eval_accuracy", float(i))
        registry.finish_run(run.id)
        registry.promote(run.id, evidence={"writer": name, "i": i}, hosts=[name])
print("done", name)
"""


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    Registry(db).close()  # created up front, so both writers start on an existing database
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), f"w{n}", str(ROUNDS)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(WRITERS)
    ]
    for w in writers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
        assert out.startswith("done")

    total = ROUNDS * WRITERS
    with Registry(db) as registry:
        runs = registry.runs()
        assert len(runs) == total
        assert sorted(r.seq for r in runs) == list(range(1, total + 1)), "sequence numbers are unique, no gaps"
        assert {r.status for r in runs} == {"succeeded"}
        for name in (f"w{n}" for n in range(WRITERS)):
            mine = [r for r in runs if r.params["writer"] == name]
            assert sorted(r.params["i"] for r in mine) == list(range(ROUNDS))
            assert all(r.metrics == {"eval_accuracy": float(r.params["i"])} for r in mine)
            assert all(registry.history(r.id, "train_loss") == [(1, float(r.params["i"]))] for r in mine)
        ledger = registry.ledger()
        assert len(ledger) == total
        assert [e.seq for e in ledger] == list(range(1, total + 1))
        assert registry.champion().id == ledger[-1].run_id  # the last promotion wins, consistently
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert raw.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 2 * total
