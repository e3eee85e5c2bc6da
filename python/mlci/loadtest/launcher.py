"""Start Locust headless in its own process(es) and wait for it, bounded in time.

Locust is never imported here: it monkey-patches the process that imports it (gevent). Distributed mode
is one master plus N worker processes on this machine, talking over 127.0.0.1. Every process runs in its
own session so that a timeout or an interrupt kills it with all of its children.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mlci.errors import MlciError

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
CSV_PREFIX = "locust"  # Locust writes locust_stats.csv, locust_stats_history.csv, locust_failures.csv, ...
HTML_FILE = "locust.html"
JSON_BASE = "locust"  # Locust appends .json
STARTUP_S = 60  # Locust's own start (imports, workers connecting) on a busy machine
EXIT_GRACE_S = 30  # after the run time: stopping users, writing reports


@dataclass(frozen=True)
class LocustRun:
    url: str
    plan: Path  # the JSON plan the locustfile reads
    output: Path
    users: int
    spawn_rate: float
    duration_s: int
    workers: int = 0  # 0: one local process; N: a master and N workers


@dataclass(frozen=True)
class LocustFiles:
    stats_csv: Path
    history_csv: Path
    failures_csv: Path
    html: Path
    json: Path
    logs: list[Path]


def files_in(output: Path) -> LocustFiles:
    return LocustFiles(
        stats_csv=output / f"{CSV_PREFIX}_stats.csv",
        history_csv=output / f"{CSV_PREFIX}_stats_history.csv",
        failures_csv=output / f"{CSV_PREFIX}_failures.csv",
        html=output / HTML_FILE,
        json=output / f"{JSON_BASE}.json",
        logs=sorted(output.glob("locust*.log")),
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _environment(plan: Path) -> dict[str, str]:
    # LOCUST_* variables would silently change the run; the plan and the command line say everything.
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCUST_")}
    env["MLCI_LOADTEST_PLAN"] = str(plan)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def master_command(run: LocustRun, master_port: int | None) -> list[str]:
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", run.url, "--users", str(run.users), "--spawn-rate", str(run.spawn_rate),
        "--run-time", f"{run.duration_s}s", "--stop-timeout", "0",
        "--csv", CSV_PREFIX, "--html", HTML_FILE, "--json-file", JSON_BASE,
        "--only-summary", "--exit-code-on-error", "0",  # the SLO gate decides, not Locust
    ]  # fmt: skip
    if master_port is not None:
        cmd += [
            "--master", "--master-bind-host", "127.0.0.1", "--master-bind-port", str(master_port),
            "--expect-workers", str(run.workers), "--expect-workers-max-wait", str(STARTUP_S),
        ]  # fmt: skip
    return cmd


def worker_command(master_port: int) -> list[str]:
    return [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--worker",
        "--master-host", "127.0.0.1", "--master-port", str(master_port),
    ]  # fmt: skip


def _start(cmd: list[str], log: Path, run: LocustRun) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, cwd=run.output, env=_environment(run.plan), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(log: Path, lines: int = 15) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_locust(run: LocustRun) -> LocustFiles:
    """Run Locust to completion; raise MlciError (exit 2) if it fails to start, crashes or overruns."""
    run.output.mkdir(parents=True, exist_ok=True)
    old = files_in(run.output)
    for path in [old.stats_csv, old.history_csv, old.failures_csv, old.html, old.json, *old.logs]:
        path.unlink(missing_ok=True)  # never report an earlier run's files
    port = _free_port() if run.workers else None
    master_log = run.output / "locust.log"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        master = _start(master_command(run, port), master_log, run)
        procs.append(master)
        if port is not None:
            for i in range(run.workers):
                procs.append(_start(worker_command(port), run.output / f"locust-worker-{i + 1}.log", run))
        limit = STARTUP_S + run.duration_s + EXIT_GRACE_S
        try:
            code = master.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            raise MlciError(f"Locust did not finish within {limit} s; log: {master_log}\n{_tail(master_log)}") from None
        for worker in procs[1:]:  # the master tells workers to quit; give them a moment
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.wait(timeout=EXIT_GRACE_S)
    finally:
        for proc in procs:
            _kill(proc)
    files = files_in(run.output)
    if code != 0 or not files.stats_csv.is_file():
        raise MlciError(f"Locust failed (exit {code}); log: {master_log}\n{_tail(master_log)}")
    return files
