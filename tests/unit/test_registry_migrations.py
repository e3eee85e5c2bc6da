"""The registry's versioned schema on both back ends: a file made before versioning is upgraded in place with
its records intact, a registry newer than the code is refused clearly, two processes opening a new registry
migrate it once; and a PostgreSQL password never comes from a URL nor shows in an error."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from mlci.config import config_from_dict
from mlci.errors import ConfigError, RegistryError
from mlci.registry import Registry
from mlci.registry_schema import LATEST, MIGRATIONS

# The schema exactly as registries were created before versioning (main at 65248ae): no schema_version.
UNVERSIONED = """
CREATE TABLE runs (id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, key TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')), git_commit TEXT,
    dirty INTEGER NOT NULL DEFAULT 0, data_hash TEXT, params TEXT NOT NULL, environment TEXT NOT NULL,
    created_at TEXT NOT NULL, finished_at TEXT, error TEXT);
CREATE INDEX runs_key ON runs (key, status);
CREATE TABLE metrics (run_id TEXT NOT NULL REFERENCES runs (id), name TEXT NOT NULL, step INTEGER,
    value REAL NOT NULL);
CREATE INDEX metrics_run ON metrics (run_id, name);
CREATE TABLE artifacts (run_id TEXT NOT NULL REFERENCES runs (id), kind TEXT NOT NULL, path TEXT NOT NULL,
    sha256 TEXT NOT NULL, bytes INTEGER NOT NULL);
CREATE INDEX artifacts_run ON artifacts (run_id);
CREATE TABLE evaluations (id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL REFERENCES runs (id),
    champion TEXT, passed INTEGER NOT NULL, results TEXT NOT NULL, created_at TEXT NOT NULL);
CREATE TABLE champion (slot INTEGER PRIMARY KEY CHECK (slot = 1), run_id TEXT NOT NULL REFERENCES runs (id),
    since TEXT NOT NULL);
CREATE TABLE ledger (seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, run_id TEXT NOT NULL,
    model_version INTEGER NOT NULL, hosts TEXT NOT NULL, who TEXT NOT NULL, evidence TEXT NOT NULL,
    outcome TEXT NOT NULL);
CREATE TRIGGER ledger_no_update BEFORE UPDATE ON ledger
BEGIN SELECT RAISE(ABORT, 'the promotion ledger is append-only'); END;
CREATE TRIGGER ledger_no_delete BEFORE DELETE ON ledger
BEGIN SELECT RAISE(ABORT, 'the promotion ledger is append-only'); END;
INSERT INTO runs VALUES ('r0001', 1, 'k1', 'succeeded', 'abc', 0, 'd1', '{"lr": 0.1}', '{}', 't0', 't1', NULL);
INSERT INTO runs VALUES ('r0002', 2, 'k2', 'failed', 'abd', 1, 'd2', '{}', '{}', 't2', 't3', 'boom');
INSERT INTO metrics VALUES ('r0001', 'val_loss', 1, 0.9);
INSERT INTO metrics VALUES ('r0001', 'train_loss', 1, 0.8);
INSERT INTO metrics VALUES ('r0001', 'val_loss', 2, 0.5);
INSERT INTO metrics VALUES ('r0001', 'accuracy', NULL, 0.97);
INSERT INTO artifacts VALUES ('r0001', 'model', '/a/model', 'ab12', 123);
INSERT INTO artifacts VALUES ('r0001', 'report', '/a/report', 'cd34', 45);
INSERT INTO evaluations (run_id, champion, passed, results, created_at) VALUES ('r0001', NULL, 1, '{}', 't4');
INSERT INTO champion VALUES (1, 'r0001', 't5');
INSERT INTO ledger (at, run_id, model_version, hosts, who, evidence, outcome)
    VALUES ('t5', 'r0001', 1, '["h1"]', 'ci', '{}', 'promoted');
"""


def test_a_registry_file_from_before_versioning_is_upgraded_with_its_records(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    with sqlite3.connect(db) as raw:
        raw.executescript(UNVERSIONED)
    with Registry(db) as registry:
        assert registry.migrated_from == 1
        run = registry.run("r0001")
        assert (run.params, run.metrics, run.git_commit) == ({"lr": 0.1}, {"accuracy": 0.97}, "abc")
        assert registry.curves("r0001") == ["val_loss", "train_loss"]  # the logging order survives
        assert registry.history("r0001", "val_loss") == [(1, 0.9), (2, 0.5)]
        assert [a.kind for a in run.artifacts] == ["model", "report"]
        assert registry.champion().id == "r0001" and registry.ledger()[0].hosts == ["h1"]
        assert registry.run("r0002").error == "boom"
        new = registry.create_run("k3", params={}, environment={})  # and it keeps working
        registry.log_metrics(new.id, {"a": 1.0, "b": 2.0}, step=1)
        assert new.id == "r0003" and registry.curves(new.id) == ["a", "b"]
    with sqlite3.connect(db) as raw:
        versions = raw.execute("SELECT version, description FROM schema_version ORDER BY version").fetchall()
        assert [v for v, _ in versions] == [m.version for m in MIGRATIONS]
        assert "before schema versioning" in versions[0][1]
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            raw.execute("DELETE FROM ledger")
    with Registry(db) as again:
        assert again.migrated_from == LATEST  # nothing left to do


def _set_version(location: str | Path, version: int) -> None:
    sql = f"INSERT INTO schema_version (version, description, applied_at) VALUES ({version}, 'future', 'now')"
    if isinstance(location, Path):
        with sqlite3.connect(location) as raw:
            raw.execute(sql)
    else:
        with psycopg.connect(location, autocommit=True) as raw:
            raw.execute(sql)


def test_a_registry_newer_than_this_code_is_refused_by_name(registry_location: str | Path) -> None:
    Registry(registry_location).close()
    _set_version(registry_location, LATEST + 1)
    with pytest.raises(RegistryError, match=rf"schema is version {LATEST + 1}, newer than this mlci knows"):
        Registry(registry_location)


OPENER = """
import sys
from mlci.registry import Registry
with Registry(sys.argv[1]) as r:
    print(r.migrated_from)
"""


def test_processes_opening_a_new_registry_at_once_migrate_it_once(registry_location: str | Path) -> None:
    openers = [
        subprocess.Popen([sys.executable, "-c", OPENER, str(registry_location)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    results = [int(p.communicate(timeout=120)[0]) for p in openers]
    assert all(p.returncode == 0 for p in openers)
    assert sorted(results)[0] == 0 and set(results) <= {0, LATEST}  # one found it new; others saw it done
    with Registry(registry_location) as registry:
        assert registry.runs() == []
    if isinstance(registry_location, Path):
        with sqlite3.connect(registry_location) as raw:
            rows = raw.execute("SELECT version FROM schema_version").fetchall()
    else:
        with psycopg.connect(registry_location) as raw:
            rows = raw.execute("SELECT version FROM schema_version").fetchall()
    assert sorted(r[0] for r in rows) == list(range(1, LATEST + 1))


def test_a_password_in_the_url_is_refused_and_not_repeated() -> None:
    with pytest.raises(RegistryError, match=r"PGPASSWORD or ~/\.pgpass") as info:
        Registry("postgresql://mlci:s3cret-pw@127.0.0.1:1/db")
    assert "s3cret-pw" not in str(info.value)
    raw = {"registry": {"url": "postgresql://mlci:s3cret-pw@db.example:5432/mlci"}}
    with pytest.raises(ConfigError, match=r"registry\.url = 'postgresql://mlci:\*\*\*@db") as info:
        config_from_dict(raw)
    assert "s3cret-pw" not in str(info.value)
    with pytest.raises(ConfigError, match="must start with postgresql://"):
        config_from_dict({"registry": {"url": "mysql://u@h/db"}})


def test_a_wrong_password_is_a_registry_error_that_does_not_show_it(pg_server, monkeypatch) -> None:
    monkeypatch.setenv("PGPASSWORD", "wrong-s3cret")  # libpq prefers it to the pgpass file
    with pytest.raises(RegistryError, match=r"cannot open the registry .*password authentication failed") as info:
        Registry(pg_server.url())
    assert "wrong-s3cret" not in str(info.value) and pg_server.password not in str(info.value)


def test_no_server_listening_is_a_registry_error_naming_the_url() -> None:
    with pytest.raises(RegistryError, match=r"postgresql://mlci@127\.0\.0\.1:1/db: cannot open the registry"):
        Registry("postgresql://mlci@127.0.0.1:1/db", timeout=2)


def test_both_back_ends_hold_the_same_tables_and_columns(tmp_path: Path, pg_server) -> None:
    sqlite_file, url = tmp_path / "registry.db", pg_server.new_database()
    Registry(sqlite_file).close()
    Registry(url).close()
    with sqlite3.connect(sqlite_file) as raw:
        tables = [r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        on_sqlite = {
            (t, c[1]) for t in tables if not t.startswith("sqlite_") for c in raw.execute(f"PRAGMA table_info({t})")
        }
    with psycopg.connect(url) as raw:
        on_postgresql = set(
            raw.execute("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = 'public'")
        )
    assert on_sqlite == on_postgresql
    assert {t for t, _ in on_sqlite} == {
        "runs", "metrics", "artifacts", "evaluations", "champion", "ledger", "schema_version"
    }  # fmt: skip
