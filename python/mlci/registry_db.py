"""The registry's two back ends behind one small interface: an embedded SQLite file (the default) and a
PostgreSQL server that a fleet of runners shares.

Both take `?` placeholders and give rows as tuples. `write()` is one transaction with one writer at a time:
SQLite's `BEGIN IMMEDIATE`; on PostgreSQL a transaction-scoped advisory lock, so `MAX(seq) + 1` and the
champion's read-then-write stay race-free across runners exactly as they are on one SQLite file.

Any driver error leaves here as a RegistryError naming the registry (a URL never carries a password: libpq
takes it from PGPASSWORD or ~/.pgpass, so it is in no message).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlci.errors import RegistryError

URL_SCHEMES = ("postgresql://", "postgres://")
_WRITE_LOCK = 0x6D6C6369  # 'mlci': the advisory lock every registry write takes on PostgreSQL


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


def url_password(url: str) -> bool:
    """Whether a PostgreSQL URL (or a libpq conninfo it parses to) carries a password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        return bool(conninfo_to_dict(url).get("password"))
    except Exception:  # a URL libpq cannot parse: look for one the way redact() does
        return redact(url) != url


def redact(url: str) -> str:
    """The URL with any password replaced by ***, for messages."""
    url = re.sub(r"^([a-z]+://[^:/@?]*:)[^@]*@", r"\1***@", url)
    return re.sub(r"(password=)[^&\s]*", r"\1***", url)


class Database:
    """One connection, its dialect and how to report it."""

    dialect: str
    location: str  # what messages name: a file path or a password-free URL

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        try:
            return self._execute(self._sql(sql), tuple(params))
        except self._errors() as exc:
            raise self.error(exc) from None

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        try:
            self._executemany(self._sql(sql), [tuple(r) for r in rows])
        except self._errors() as exc:
            raise self.error(exc) from None

    def script(self, text: str) -> None:
        """Several DDL statements, inside the current write transaction."""
        raise NotImplementedError

    @contextmanager
    def write(self, serialize: bool = True) -> Iterator[None]:
        """One transaction. `serialize`: one such writer at a time (what a read-then-write needs); writes
        that only add or change their own run's rows may pass False (PostgreSQL then runs them side by side)."""
        raise NotImplementedError
        yield

    def close(self) -> None:
        raise NotImplementedError

    def error(self, exc: BaseException) -> RegistryError:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return RegistryError(f"{self.location}: {first}")

    def _sql(self, sql: str) -> str:
        return sql

    def _errors(self) -> tuple[type[BaseException], ...]:
        raise NotImplementedError

    def _execute(self, sql: str, params: tuple[Any, ...]) -> Any:
        raise NotImplementedError

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        raise NotImplementedError


class SqliteDatabase(Database):
    dialect = "sqlite"

    def __init__(self, path: Path, timeout: float) -> None:
        self.location = str(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.DatabaseError as exc:
            raise RegistryError(f"{path}: not a usable registry database ({exc})") from None

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (sqlite3.Error,)

    def _execute(self, sql: str, params: tuple[Any, ...]) -> Any:
        return self._db.execute(sql, params)

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._db.executemany(sql, rows)

    def script(self, text: str) -> None:
        for statement in _statements(text):  # executescript would commit our open transaction
            self.execute(statement)

    @contextmanager
    def write(self, serialize: bool = True) -> Iterator[None]:
        self.execute("BEGIN IMMEDIATE")  # SQLite has one writer at a time anyway
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, url: str, timeout: float) -> None:
        import psycopg

        self._psycopg = psycopg
        self.location = redact(url)
        if url_password(url):
            raise RegistryError(
                "the registry URL carries a password: give it through PGPASSWORD or ~/.pgpass instead "
                "(a URL ends up in configs and logs)"
            )
        try:
            self._db = psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout)))
            # A write waits for the one before it at most `timeout` (then a clear error, not a hang).
            self._db.execute(f"SET lock_timeout = {int(timeout * 1000)}")
        except psycopg.Error as exc:
            raise RegistryError(f"{self.location}: cannot open the registry ({_first_line(exc)})") from None

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _errors(self) -> tuple[type[BaseException], ...]:
        return (self._psycopg.Error,)

    def _execute(self, sql: str, params: tuple[Any, ...]) -> Any:
        return self._db.execute(sql, params or None)

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        with self._db.cursor() as cur:
            cur.executemany(sql, rows)

    def script(self, text: str) -> None:
        try:
            self._db.execute(text)  # no parameters: the simple protocol runs several statements
        except self._psycopg.Error as exc:
            raise self.error(exc) from None

    @contextmanager
    def write(self, serialize: bool = True) -> Iterator[None]:
        try:
            with self._db.transaction():
                if serialize:
                    self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_WRITE_LOCK,))
                yield
        except self._psycopg.errors.LockNotAvailable:
            raise RegistryError(f"{self.location}: another writer held the registry too long; try again") from None
        except self._psycopg.Error as exc:
            raise self.error(exc) from None

    def close(self) -> None:
        self._db.close()


def connect(location: str | Path, timeout: float) -> Database:
    if is_url(location):
        return PostgresDatabase(str(location), timeout)
    return SqliteDatabase(Path(location), timeout)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _statements(script: str) -> list[str]:
    """Split a SQLite script into statements (a trigger's body holds `;` before its END)."""
    out, buf = [], []
    for line in script.splitlines():
        buf.append(line.split("--", 1)[0])
        text = "\n".join(buf).strip()
        if text.endswith(";") and (not text.upper().startswith("CREATE TRIGGER") or text.upper().endswith("END;")):
            out.append(text)
            buf = []
    return out
