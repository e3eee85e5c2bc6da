"""The run registry: runs, metrics, artifacts, evaluations, the champion pointer and an append-only promotion
ledger, in an embedded SQLite file (WAL; the default) or on a PostgreSQL server a fleet of runners shares.

Every write is one short transaction with one writer at a time (registry_db.py), so two processes -- or two
runners -- writing at once serialize (waiting up to `timeout` seconds) instead of corrupting or losing
records. The schema is versioned (registry_schema.py). The registry stores; it never trains or evaluates.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlci.errors import RegistryError
from mlci.registry_db import Database, connect, is_url
from mlci.registry_schema import migrate

if TYPE_CHECKING:
    from mlci.config import Config


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class Artifact:
    kind: str
    path: str
    sha256: str
    bytes: int


@dataclass(frozen=True)
class Run:
    id: str
    seq: int
    key: str
    status: str
    git_commit: str | None
    dirty: bool
    data_hash: str | None
    params: dict[str, Any]
    environment: dict[str, Any]
    created_at: str
    finished_at: str | None
    error: str | None
    metrics: dict[str, float] = field(default_factory=dict)  # final values (step NULL)
    artifacts: list[Artifact] = field(default_factory=list)

    def artifact(self, kind: str = "model") -> Artifact | None:
        return next((a for a in self.artifacts if a.kind == kind), None)


@dataclass(frozen=True)
class LedgerEntry:
    seq: int
    at: str
    run_id: str
    model_version: int
    hosts: list[str]
    who: str
    evidence: dict[str, Any]
    outcome: str


class Registry:
    """Open (and create or upgrade on first use) the registry at `path`: a SQLite file, or a
    `postgresql://user@host/db` URL (the password from PGPASSWORD or ~/.pgpass, never in the URL)."""

    def __init__(self, path: str | Path, *, timeout: float = 60.0) -> None:
        # A URL stays a string (Path would fold its `//`); `path` is what reopens it (torchrun workers do).
        self.path: str | Path = str(path) if is_url(path) else Path(path)
        self._db: Database = connect(self.path, timeout)
        try:
            self.migrated_from = migrate(self._db)
        except BaseException:
            self._db.close()
            raise
        from mlci.runlock import sweep  # a run whose process died (SIGKILL, power loss) is failed here

        self.abandoned = sweep(self)

    # --- plumbing --------------------------------------------------------------------------------------

    @contextmanager
    def _write(self, serialize: bool = True) -> Iterator[Database]:
        with self._db.write(serialize):
            yield self._db

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- runs ------------------------------------------------------------------------------------------

    def create_run(
        self,
        key: str,
        *,
        params: dict[str, Any],
        environment: dict[str, Any],
        git_commit: str | None = None,
        dirty: bool = False,
        data_hash: str | None = None,
    ) -> Run:
        with self._write() as db:
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM runs").fetchone()[0]
            run_id = f"r{seq:04d}"
            db.execute(
                "INSERT INTO runs (id, seq, key, status, git_commit, dirty, data_hash, params, environment,"
                " created_at) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    seq,
                    key,
                    git_commit,
                    int(dirty),
                    data_hash,
                    json.dumps(params, sort_keys=True),
                    json.dumps(environment, sort_keys=True),
                    now(),
                ),
            )
        return self.run(run_id)

    def finish_run(self, run_id: str, status: str = "succeeded", *, error: str | None = None) -> None:
        with self._write(serialize=False) as db:  # this run's own rows only
            cur = db.execute(
                "UPDATE runs SET status = ?, finished_at = ?, error = ? WHERE id = ?", (status, now(), error, run_id)
            )
            if cur.rowcount != 1:
                raise RegistryError(f"{self.path}: no run {run_id!r}")

    def run(self, ref: str) -> Run:
        """A run by id, id prefix, `latest` or `champion`."""
        if ref == "latest":
            found = self.latest_run()
        elif ref == "champion":
            found = self.champion()
        else:
            rows = self._db.execute("SELECT id FROM runs WHERE id = ? OR id LIKE ?", (ref, f"{ref}%")).fetchall()
            if len(rows) > 1 and not any(r[0] == ref for r in rows):
                raise RegistryError(f"{self.path}: run {ref!r} is ambiguous ({', '.join(r[0] for r in rows)})")
            found = self._load(ref if any(r[0] == ref for r in rows) else rows[0][0]) if rows else None
        if found is None:
            raise RegistryError(f"{self.path}: no run {ref!r}")
        return found

    def find_run(self, key: str) -> Run | None:
        """The newest succeeded run with this run key (what `train` reuses), or None."""
        row = self._db.execute(
            "SELECT id FROM runs WHERE key = ? AND status = 'succeeded' ORDER BY seq DESC LIMIT 1", (key,)
        ).fetchone()
        return self._load(row[0]) if row else None

    def latest_run(self, status: str | None = "succeeded") -> Run | None:
        sql = "SELECT id FROM runs" + (" WHERE status = ?" if status else "") + " ORDER BY seq DESC LIMIT 1"
        row = self._db.execute(sql, (status,) if status else ()).fetchone()
        return self._load(row[0]) if row else None

    def running_runs(self) -> list[tuple[str, dict[str, Any]]]:
        """(id, environment) of every run still `running` (runlock.sweep judges whether it is alive)."""
        rows = self._db.execute("SELECT id, environment FROM runs WHERE status = 'running' ORDER BY seq")
        return [(r[0], json.loads(r[1])) for r in rows]

    def fail_if_running(self, run_id: str, error: str) -> bool:
        """Mark `run_id` failed with `error` only if it is still running; True when it was."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE runs SET status = 'failed', finished_at = ?, error = ? WHERE id = ? AND status = 'running'",
                (now(), error, run_id),
            )
            return cur.rowcount == 1

    def runs(self) -> list[Run]:
        return [self._load(r[0]) for r in self._db.execute("SELECT id FROM runs ORDER BY seq")]

    def _load(self, run_id: str) -> Run | None:
        row = self._db.execute(
            "SELECT id, seq, key, status, git_commit, dirty, data_hash, params, environment, created_at,"
            " finished_at, error FROM runs WHERE id = ?",
            (run_id,),
        ).fetchone()
        if row is None:
            return None
        metrics = {
            name: value
            for name, value in self._db.execute(
                "SELECT name, value FROM metrics WHERE run_id = ? AND step IS NULL ORDER BY id", (run_id,)
            )
        }
        artifacts = [
            Artifact(*a)
            for a in self._db.execute(
                "SELECT kind, path, sha256, bytes FROM artifacts WHERE run_id = ? ORDER BY id", (run_id,)
            )
        ]
        return Run(
            id=row[0], seq=row[1], key=row[2], status=row[3], git_commit=row[4], dirty=bool(row[5]),
            data_hash=row[6], params=json.loads(row[7]), environment=json.loads(row[8]), created_at=row[9],
            finished_at=row[10], error=row[11], metrics=metrics, artifacts=artifacts,
        )  # fmt: skip

    # --- metrics and artifacts -------------------------------------------------------------------------

    def log_metric(self, run_id: str, name: str, value: float, step: int | None = None) -> None:
        self.log_metrics(run_id, {name: value}, step=step)

    def log_metrics(self, run_id: str, values: dict[str, float], step: int | None = None) -> None:
        with self._write(serialize=False) as db:  # this run's own rows only
            if step is None:  # a final value replaces the previous final value of the same name
                db.executemany(
                    "DELETE FROM metrics WHERE run_id = ? AND name = ? AND step IS NULL",
                    [(run_id, n) for n in values],
                )
            db.executemany(
                "INSERT INTO metrics (run_id, name, step, value) VALUES (?, ?, ?, ?)",
                [(run_id, n, step, float(v)) for n, v in values.items()],
            )

    def metrics(self, run_id: str) -> dict[str, float]:
        return dict(self._db.execute("SELECT name, value FROM metrics WHERE run_id = ? AND step IS NULL", (run_id,)))

    def history(self, run_id: str, name: str) -> list[tuple[int, float]]:
        """A metric's curve: (step, value) pairs in step order."""
        return list(
            self._db.execute(
                "SELECT step, value FROM metrics WHERE run_id = ? AND name = ? AND step IS NOT NULL ORDER BY step",
                (run_id, name),
            )
        )

    def curves(self, run_id: str) -> list[str]:
        """Names of the metrics logged per step (epoch) for a run, in the order first logged."""
        rows = self._db.execute(
            "SELECT name FROM metrics WHERE run_id = ? AND step IS NOT NULL GROUP BY name ORDER BY MIN(id)",
            (run_id,),
        )
        return [r[0] for r in rows]

    def add_artifact(self, run_id: str, kind: str, path: str | Path, sha256: str, size: int) -> None:
        with self._write(serialize=False) as db:  # this run's own rows only
            db.execute(
                "INSERT INTO artifacts (run_id, kind, path, sha256, bytes) VALUES (?, ?, ?, ?, ?)",
                (run_id, kind, str(path), sha256, int(size)),
            )

    # --- evaluations -----------------------------------------------------------------------------------

    def add_evaluation(self, run_id: str, champion: str | None, passed: bool, results: dict[str, Any]) -> int:
        with self._write(serialize=False) as db:  # this run's own rows only
            row = db.execute(
                "INSERT INTO evaluations (run_id, champion, passed, results, created_at) VALUES (?, ?, ?, ?, ?)"
                " RETURNING id",
                (run_id, champion, int(passed), json.dumps(results, sort_keys=True), now()),
            ).fetchone()
            return int(row[0])

    def latest_evaluation(self, run_id: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT champion, passed, results, created_at FROM evaluations WHERE run_id = ? ORDER BY id DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        if row is None:
            return None
        return {"champion": row[0], "passed": bool(row[1]), "results": json.loads(row[2]), "created_at": row[3]}

    # --- champion and ledger ---------------------------------------------------------------------------

    def champion(self) -> Run | None:
        row = self._db.execute("SELECT run_id FROM champion WHERE slot = 1").fetchone()
        return self._load(row[0]) if row else None

    def promote(
        self,
        run_id: str,
        *,
        evidence: dict[str, Any],
        hosts: list[str] | None = None,
        who: str | None = None,
        outcome: str = "promoted",
    ) -> LedgerEntry:
        """Make `run_id` the champion and append the promotion to the ledger, in one transaction."""
        with self._write() as db:
            # This promotion's own entry (another runner may append right after it; reading the whole
            # ledger for its last line would also cost more with every promotion).
            return self._promote(db, run_id, evidence, hosts or [], who, outcome)

    def promote_first(self, run_id: str, *, evidence: dict[str, Any], outcome: str = "first champion") -> bool:
        """Promote `run_id` only if there is no champion yet (checked in the same transaction, so two
        evaluations racing cannot both become "first"). True when it was promoted."""
        with self._write() as db:
            if db.execute("SELECT 1 FROM champion WHERE slot = 1").fetchone() is not None:
                return False
            self._promote(db, run_id, evidence, [], None, outcome)
        return True

    def _promote(
        self,
        db: Database,
        run_id: str,
        evidence: dict[str, Any],
        hosts: list[str],
        who: str | None,
        outcome: str,
    ) -> LedgerEntry:
        if db.execute("SELECT 1 FROM runs WHERE id = ? AND status = 'succeeded'", (run_id,)).fetchone() is None:
            raise RegistryError(f"{self.path}: run {run_id!r} does not exist or did not succeed")
        db.execute(
            "INSERT INTO champion (slot, run_id, since) VALUES (1, ?, ?)"
            " ON CONFLICT (slot) DO UPDATE SET run_id = excluded.run_id, since = excluded.since",
            (run_id, now()),
        )
        return self._append_ledger(db, run_id, evidence, hosts, who, outcome)

    def record(
        self,
        run_id: str,
        *,
        evidence: dict[str, Any],
        hosts: list[str],
        outcome: str,
        who: str | None = None,
    ) -> None:
        """Append a ledger entry that changes no champion (a failed or rolled-back deploy, say)."""
        with self._write() as db:
            self._append_ledger(db, run_id, evidence, hosts, who, outcome)

    def _append_ledger(
        self,
        db: Database,
        run_id: str,
        evidence: dict[str, Any],
        hosts: list[str],
        who: str | None,
        outcome: str,
    ) -> LedgerEntry:
        seq = db.execute("SELECT seq FROM runs WHERE id = ?", (run_id,)).fetchone()
        if seq is None:
            raise RegistryError(f"{self.path}: no run {run_id!r}")
        at, who = now(), who or _who()
        row = db.execute(
            "INSERT INTO ledger (at, run_id, model_version, hosts, who, evidence, outcome)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING seq",
            (at, run_id, seq[0], json.dumps(hosts), who, json.dumps(evidence, sort_keys=True), outcome),
        ).fetchone()
        return LedgerEntry(int(row[0]), at, run_id, int(seq[0]), list(hosts), who, evidence, outcome)

    def ledger(self) -> list[LedgerEntry]:
        return [
            LedgerEntry(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], json.loads(r[6]), r[7])
            for r in self._db.execute(
                "SELECT seq, at, run_id, model_version, hosts, who, evidence, outcome FROM ledger ORDER BY seq"
            )
        ]


def _who() -> str:
    try:
        import getpass  # here: only promotions need it, and the no-op path of `mlci train` opens the registry

        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def open_registry(config: Config, *, timeout: float = 60.0) -> Registry:
    """The registry `config` names: `[registry] url` when set (PostgreSQL), else the SQLite file at `path`."""
    return Registry(location(config), timeout=timeout)


def location(config: Config) -> str | Path:
    return config.registry.url or config.path(config.registry.path)


def exists(config: Config) -> bool:
    """Whether there is a registry to read yet (a server always counts; a SQLite file once created)."""
    where = location(config)
    return isinstance(where, str) or where.exists()
