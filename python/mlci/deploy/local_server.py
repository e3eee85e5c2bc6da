"""The `local` runtime: a supervised `mlci serve` on this machine that outlives the command that started it.

    python -m mlci.deploy.local_server start --root R [--version V] -- <mlci serve arguments>
    python -m mlci.deploy.local_server stop --root R
    python -m mlci.deploy.local_server status --root R

`start` detaches a supervisor (its own session, so closing the terminal or the nox session does not stop it)
that runs `python -m mlci serve ...` and restarts it when it dies unexpectedly, as systemd's
Restart=on-failure does for the systemd runtime, with a back-off and a limit on restarts in a row. Files
under R: server.pid (the supervisor's pid), server.log (both processes' output), server.version (what was
started: a later deploy compares it to decide on a restart). Each command prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESTART_DELAY_S = 2.0
MAX_QUICK_RESTARTS = 5  # in a row, each within QUICK_S of its start: give up rather than spin
QUICK_S = 10.0
STOP_TIMEOUT_S = 40.0  # the server's own graceful shutdown (serving.graceful_timeout_s) plus margin


def _pid_file(root: Path) -> Path:
    return root / "server.pid"


def running_pid(root: Path) -> int | None:
    """The supervisor's pid when it is alive (a stale pid file from a reboot or a kill -9 reads as None)."""
    try:
        pid = int(_pid_file(root).read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    try:  # a recycled pid belongs to some other program
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return pid
    return pid if b"mlci.deploy.local_server" in cmdline else None


def status(root: Path) -> dict[str, Any]:
    pid = running_pid(root)
    version_file = root / "server.version"
    return {
        "running": pid is not None,
        "pid": pid,
        "version": version_file.read_text().strip() if version_file.exists() else None,
        "log": str(root / "server.log"),
    }


def start(root: Path, serve_args: list[str], version: str) -> dict[str, Any]:
    """Start the supervisor unless one runs; `changed` says whether anything was started."""
    if running_pid(root) is not None:
        return {**status(root), "changed": False}
    root.mkdir(parents=True, exist_ok=True)
    (root / "server.version").write_text(version + "\n")
    with open(root / "server.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlci.deploy.local_server", "supervise", "--root", str(root), "--", *serve_args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own session: no terminal or parent signal reaches it
            close_fds=True,
        )
    _pid_file(root).write_text(f"{proc.pid}\n")
    return {**status(root), "changed": True}


def stop(root: Path) -> dict[str, Any]:
    pid = running_pid(root)
    if pid is None:
        _pid_file(root).unlink(missing_ok=True)
        return {**status(root), "changed": False}
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and running_pid(root) == pid:
        time.sleep(0.1)
    if running_pid(root) == pid:
        os.killpg(pid, signal.SIGKILL)
    _pid_file(root).unlink(missing_ok=True)
    return {**status(root), "changed": True}


def supervise(root: Path, serve_args: list[str]) -> int:
    """Run the server; restart it when it exits on its own; forward SIGTERM/SIGINT and exit with it."""
    stopping = False
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    quick = 0
    while True:
        started = time.monotonic()
        child = subprocess.Popen([sys.executable, "-m", "mlci", "serve", *serve_args], stdin=subprocess.DEVNULL)
        code = child.wait()
        if stopping:
            _pid_file(root).unlink(missing_ok=True)
            return 0
        quick = quick + 1 if time.monotonic() - started < QUICK_S else 0
        _log(f"mlci serve exited with {code}; " + ("giving up" if quick >= MAX_QUICK_RESTARTS else "restarting"))
        if quick >= MAX_QUICK_RESTARTS:
            _pid_file(root).unlink(missing_ok=True)
            return 1
        time.sleep(RESTART_DELAY_S)


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    print(f"{stamp} supervisor: {message}", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    serve_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, serve_args = argv[:cut], argv[cut + 1 :]
    p = argparse.ArgumentParser(prog="python -m mlci.deploy.local_server")
    p.add_argument("action", choices=["start", "stop", "status", "supervise"])
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--version", default="", help="what is being started (stored in server.version)")
    args = p.parse_args(argv)
    root = args.root.resolve()
    if args.action == "supervise":
        with contextlib.suppress(KeyboardInterrupt):
            return supervise(root, serve_args)
        return 0
    if args.action == "start":
        out = start(root, serve_args, args.version)
    elif args.action == "stop":
        out = stop(root)
    else:
        out = status(root)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
