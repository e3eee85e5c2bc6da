"""A throw-away PostgreSQL server for the registry's tests and bench: Debian's `postgresql` binaries, a
cluster in a temp dir run by an unprivileged user (the server refuses root), TCP on 127.0.0.1 with password
authentication, the password only in a pgpass file (PGPASSFILE), as a runner gets it from the ci_runner role.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

BIN = Path(os.environ.get("MLCI_PG_BIN", "/usr/lib/postgresql/15/bin"))
USER = "mlci"  # the cluster's superuser (a PostgreSQL role, not an OS account)


def available() -> str | None:
    """None when a cluster can start here, else why not."""
    if not (BIN / "initdb").exists():
        return f"{BIN / 'initdb'} is missing (apt-get install postgresql)"
    return None


class PgCluster:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="mlci-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.password = secrets.token_hex(12)
        self.pgpass = self.dir / "pgpass"
        self._as: list[str] = []
        if os.geteuid() == 0:  # run the server as nobody, in a folder nobody owns
            self._as = ["runuser", "-u", "nobody", "--"]
            nobody = pwd.getpwnam("nobody")
            os.chown(self.dir, nobody.pw_uid, nobody.pw_gid)
        os.chmod(self.dir, 0o700 if not self._as else 0o755)

    def start(self) -> PgCluster:
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as:
            nobody = pwd.getpwnam("nobody")
            os.chown(pwfile, nobody.pw_uid, nobody.pw_gid)
        self._run(
            str(BIN / "initdb"), "-D", str(self.data), "-U", USER, f"--pwfile={pwfile}", "-A", "scram-sha-256",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off -c max_connections=200"
        self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-o", options, "-w", "start")
        # The client side reads the password the way a runner does: from a pgpass file (mode 0600).
        self.pgpass.write_text(f"127.0.0.1:{self.port}:*:{USER}:{self.password}\n")
        os.chmod(self.pgpass, 0o600)
        os.environ["PGPASSFILE"] = str(self.pgpass)
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database on this server; its URL (no password in it)."""
        import psycopg

        name = f"reg_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        try:
            self._run(str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            if os.environ.get("PGPASSFILE") == str(self.pgpass):
                del os.environ["PGPASSFILE"]
            shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self, *argv: str) -> None:
        done = subprocess.run([*self._as, *argv], capture_output=True, text=True, cwd=self.dir, check=False)
        if done.returncode != 0:
            log = self.dir / "log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}\n{tail}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
