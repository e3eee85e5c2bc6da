"""The registry on both back ends, a real SQLite file and a real PostgreSQL server: runs, metrics and curves,
artifacts, champion and the append-only ledger."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from mlci.errors import RegistryError
from mlci.registry import Registry


@pytest.fixture
def registry(registry_location: str | Path):
    with Registry(registry_location) as r:
        yield r


def _raw(registry: Registry, statement: str) -> None:
    """Run SQL on the registry's database directly, past the Registry class (the driver's error escapes)."""
    if isinstance(registry.path, Path):
        with sqlite3.connect(registry.path) as raw:
            raw.execute(statement)
    else:
        with psycopg.connect(registry.path, autocommit=True) as raw:
            raw.execute(statement)


def _run(registry: Registry, key: str = "k", status: str = "succeeded"):
    run = registry.create_run(key, params={"train": {"lr": 0.1}}, environment={"torch": "x"}, git_commit="abc")
    if status != "running":
        registry.finish_run(run.id, status, error="boom" if status == "failed" else None)
    return registry.run(run.id)


def test_runs_get_increasing_ids_and_keep_what_was_recorded(registry: Registry) -> None:
    a, b = _run(registry), _run(registry, "other", "running")
    assert (a.id, a.seq, b.id, b.seq) == ("r0001", 1, "r0002", 2)
    assert a.params == {"train": {"lr": 0.1}} and a.environment == {"torch": "x"} and a.git_commit == "abc"
    assert a.status == "succeeded" and a.finished_at and b.status == "running" and b.finished_at is None
    assert registry.run("r0002").id == "r0002" and registry.run("latest").id == "r0001"


def test_find_run_reuses_only_the_newest_succeeded_run_of_a_key(registry: Registry) -> None:
    ok = _run(registry, "k")
    _run(registry, "k", "failed")
    _run(registry, "k", "running")
    assert registry.find_run("k").id == ok.id
    newer = _run(registry, "k")
    assert registry.find_run("k").id == newer.id
    assert registry.find_run("unknown") is None


def test_final_metrics_replace_and_curves_accumulate(registry: Registry) -> None:
    run = _run(registry)
    for epoch, loss in enumerate([0.9, 0.5, 0.2], start=1):
        registry.log_metrics(run.id, {"train_loss": loss, "train_accuracy": 1 - loss}, step=epoch)
    registry.log_metric(run.id, "train_loss", 0.3)
    registry.log_metric(run.id, "train_loss", 0.25)
    assert registry.history(run.id, "train_loss") == [(1, 0.9), (2, 0.5), (3, 0.2)]
    assert registry.run(run.id).metrics == {"train_loss": 0.25}


def test_artifacts_and_evaluations(registry: Registry) -> None:
    run = _run(registry)
    registry.add_artifact(run.id, "model", "/a/b", "f" * 64, 123)
    assert registry.run(run.id).artifact("model").bytes == 123
    assert registry.latest_evaluation(run.id) is None
    registry.add_evaluation(run.id, None, False, {"gates": []})
    registry.add_evaluation(run.id, None, True, {"gates": [], "n": 2})
    assert registry.latest_evaluation(run.id)["passed"] is True


def test_promote_needs_a_succeeded_run_and_the_ledger_is_append_only(registry: Registry, tmp_path: Path) -> None:
    running = _run(registry, status="running")
    with pytest.raises(RegistryError, match="did not succeed"):
        registry.promote(running.id, evidence={})
    good = _run(registry)
    entry = registry.promote(good.id, evidence={"gates": "passed"}, hosts=["h1"], who="ci")
    assert registry.champion().id == good.id
    assert (entry.run_id, entry.model_version, entry.hosts, entry.who) == (good.id, good.seq, ["h1"], "ci")
    for statement in ("UPDATE ledger SET outcome = 'x'", "DELETE FROM ledger"):
        with pytest.raises((sqlite3.DatabaseError, psycopg.Error), match="append-only"):
            _raw(registry, statement)
    assert len(registry.ledger()) == 1


def test_unknown_run(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="no run 'r9999'"):
        registry.run("r9999")


def test_a_file_that_is_no_database_is_a_registry_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(RegistryError, match="not a usable registry"):
        Registry(junk)
