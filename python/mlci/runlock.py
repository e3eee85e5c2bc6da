"""Liveness of `running` runs without a schema change: each one holds an OS lock for its whole life.

A run's owner holds an flock on `<registry dir>/runs/<run_id>.lock` (host, pid and start time inside) from
the moment the run is created until it is finished. The kernel drops the lock when the process dies, however
it dies (SIGKILL, OOM killer, power loss), so a `running` run of this host whose lock is free is abandoned:
the next mlci command that opens the registry marks it `failed` ("abandoned").

Creating a run and taking its lock are not one step, so creators hold a shared lock on `runs/.creating`
across both, and the sweep runs only when it can take that lock exclusively (else it waits for the next
command): it never mistakes a run being born for a dead one. Runs of other hosts (a shared registry) are
never judged here: their locks live on their own host.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlci.registry import Registry, Run

ABANDONED = "abandoned: its process ended without finishing it (killed, or the host went down)"


def runs_dir(registry_path: str | Path) -> Path:
    """Where this host keeps the locks of its runs: beside a SQLite file; for a server's URL (a registry several
    hosts share), a folder of this host's temp dir named after the URL, seen by every process here."""
    from mlci.registry_db import is_url

    if is_url(registry_path):
        digest = hashlib.sha256(str(registry_path).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"mlci-runs-{digest}"
    return Path(registry_path).parent / "runs"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@contextmanager
def held(registry: Registry, create: Callable[[], Run]) -> Iterator[Run]:
    """Create a run with `create()` and hold its lock until the block ends (finish the run inside it)."""
    folder = runs_dir(registry.path)
    folder.mkdir(parents=True, exist_ok=True)
    gate = os.open(folder / ".creating", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(gate, fcntl.LOCK_SH)
        run = create()
        path = folder / f"{run.id}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        owner = {"host": platform.node(), "pid": os.getpid(), "since": _now(), "run": run.id}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(owner) + "\n").encode())
    finally:
        os.close(gate)
    try:
        yield run
    finally:
        # The run is finished (its status committed) before the lock goes: a sweep that then finds the lock
        # free sees a finished run and leaves it alone.
        with suppress(FileNotFoundError):
            path.unlink()
        os.close(fd)


def sweep(registry: Registry) -> list[str]:
    """Mark this host's `running` runs whose lock is free `failed` (abandoned); return their ids."""
    running = registry.running_runs()
    host = platform.node()
    mine = [run_id for run_id, env in running if env.get("hostname") == host]
    if not mine:  # the usual case: one query, no file touched
        return []
    folder = runs_dir(registry.path)
    folder.mkdir(parents=True, exist_ok=True)
    gate = os.open(folder / ".creating", os.O_RDWR | os.O_CREAT, 0o644)
    abandoned = []
    try:
        try:
            fcntl.flock(gate, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return []  # a run is being created right now; the next command sweeps
        for run_id in mine:
            if _alive(folder / f"{run_id}.lock", host):
                continue
            if registry.fail_if_running(run_id, ABANDONED):
                abandoned.append(run_id)
            with suppress(FileNotFoundError):
                (folder / f"{run_id}.lock").unlink()
    finally:
        os.close(gate)
    return abandoned


def _alive(path: Path, host: str) -> bool:
    """True when the run's lock is held, or the lock file names another host (not ours to judge)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False  # created (under the gate) but never locked: its process died in between
    try:
        try:
            owner = json.loads(os.read(fd, 4096) or b"{}")
        except ValueError:
            owner = {}
        if owner.get("host", host) != host:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False
    finally:
        os.close(fd)
