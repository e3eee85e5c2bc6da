"""Two real processes -- two runners -- writing one registry at once lose nothing, corrupt nothing and agree
on one champion, on both back ends (SQLite WAL + BEGIN IMMEDIATE; PostgreSQL with one advisory-locked writer
at a time). Each writer races the other to be the first champion, then does N rounds of create_run,
log_metric (final and per step), finish_run, promote."""

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
    first = registry.create_run(f"{name}-first", params={"writer": name, "i": -1}, environment={})
    registry.finish_run(first.id)
    registry.promote_first(first.id, evidence={"writer": name})
    for i in range(rounds):
        run = registry.create_run(f"{name}-{i}", params={"writer": name, "i": i}, environment={})
        registry.log_metric(run.id, "train_loss", float(i), step=1)
        registry.log_metric(run.id, "eval_accuracy", float(i))
        registry.finish_run(run.id)
        registry.promote(run.id, evidence={"writer": name, "i": i}, hosts=[name])
print("done", name)
"""


def _champion_seen_by_a_new_process(db: str | Path) -> str:
    code = "import sys; from mlci.registry import Registry; print(Registry(sys.argv[1]).champion().id)"
    return subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True, check=True).stdout


def test_two_processes_writing_at_once_lose_nothing_and_agree_on_one_champion(registry_location: str | Path) -> None:
    db = registry_location
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

    total = (ROUNDS + 1) * WRITERS
    with Registry(db) as registry:
        runs = registry.runs()
        assert len(runs) == total
        assert sorted(r.seq for r in runs) == list(range(1, total + 1)), "sequence numbers are unique, no gaps"
        assert {r.status for r in runs} == {"succeeded"}
        for name in (f"w{n}" for n in range(WRITERS)):
            mine = [r for r in runs if r.params["writer"] == name and r.params["i"] >= 0]
            assert sorted(r.params["i"] for r in mine) == list(range(ROUNDS))
            assert all(r.metrics == {"eval_accuracy": float(r.params["i"])} for r in mine)
            assert all(registry.history(r.id, "train_loss") == [(1, float(r.params["i"]))] for r in mine)
        ledger = registry.ledger()
        assert [e.outcome for e in ledger].count("first champion") == 1, "only one writer became the first"
        assert len(ledger) == ROUNDS * WRITERS + 1
        assert [e.seq for e in ledger] == list(range(1, len(ledger) + 1))
        assert registry.champion().id == ledger[-1].run_id  # the last promotion wins, consistently
    seen = {_champion_seen_by_a_new_process(db) for _ in range(WRITERS)}
    assert seen == {ledger[-1].run_id + "\n"}, "every runner reads the same champion"
    if not isinstance(db, Path):
        return
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert raw.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 2 * ROUNDS * WRITERS
