"""Nox sessions: thin wrappers around `python -m mlci ...`; all logic lives in python/mlci.

Every session shares one project environment (`.venv`), so torch is installed once per checkout, not
once per session, and a session with nothing to install starts in milliseconds.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "none"
nox.options.sessions = ["lint", "tests"]
nox.options.error_on_missing_interpreters = True
# `nox -s train deploy`: a failed gate must stop the deploy.
nox.options.stop_on_first_error = True

ROOT = Path(__file__).parent
VENV = ROOT / ".venv"
BIN = VENV / "bin"
STAMP = VENV / ".mlci-installed"


def _environment(session: nox.Session) -> dict[str, str]:
    """Create or refresh .venv when pyproject.toml changed; return the env that puts it first on PATH."""
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not (STAMP.exists() and STAMP.read_text() == wanted):
        if not (BIN / "python").exists():
            session.log("creating the project environment .venv (once)")
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        session.run(str(BIN / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip", external=True)
        session.run(str(BIN / "python"), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[dev]", external=True)
        STAMP.write_text(wanted)
    return {"PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "VIRTUAL_ENV": str(VENV)}


def _mlci(session: nox.Session, *args: str) -> None:
    """Run `python -m mlci ARGS POSARGS`; nox then exits with mlci's own code (1 gate failed, 2 bad input)."""
    env = {**os.environ, **_environment(session)}
    command = [str(BIN / "python"), "-m", "mlci", *args, *session.posargs]
    session.log(" ".join(command[1:]))
    code = subprocess.run(command, env=env, check=False).returncode
    if code:
        _exit_with(code)
        session.error(f"mlci {args[0]} exited with {code}")


def _exit_with(code: int) -> None:
    """Nox exits 1 for any failed session; keep mlci's exit-code contract (0 pass, 1 gate, 2 usage/data)."""
    atexit.register(os._exit, code)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on the Python code and ansible-lint (production profile) on playbooks and roles."""
    env = _environment(session)
    session.run("ruff", "check", ".", env=env, external=True)
    session.run("ruff", "format", "--check", ".", env=env, external=True)
    session.run("ansible-lint", "--profile", "production", *session.posargs, env=env, external=True)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (unit, integration on sandbox hosts, ansible); pytest args pass through."""
    env = _environment(session)
    session.run(str(BIN / "python"), "-m", "pytest", *session.posargs, env=env, external=True)


@nox.session
def data(session: nox.Session) -> None:
    """Check the data files against the schema (exit 2 with the file, row, column and value on error)."""
    _mlci(session, "data")


@nox.session
def train(session: nox.Session) -> None:
    """Data check -> train (skipped when nothing changed) -> evaluate -> report; exits with the gates' code."""
    _mlci(session, "train")


@nox.session(default=False)
def periodic(session: nox.Session) -> None:
    """What cron runs on runners: retrain when code, data or params changed (else a no-op), gate, report, deploy."""
    _mlci(session, "periodic")


@nox.session(default=False)
def runs(session: nox.Session) -> None:
    """The registry at a glance, newest first (-- --limit N); `-- show REF` for one run in full."""
    _mlci(session, "runs")


@nox.session
def evaluate(session: nox.Session) -> None:
    """Evaluate the latest run against the champion and apply the gates (exit 1 when one fails)."""
    _mlci(session, "evaluate")


@nox.session
def report(session: nox.Session) -> None:
    """Write reports/<run>/: report.md, report.html, plots and gates.xml (JUnit)."""
    _mlci(session, "report")


@nox.session(default=False)
def compare(session: nox.Session) -> None:
    """This checkout against a base git revision (-- origin/main): a markdown pull-request comment."""
    _mlci(session, "compare")


@nox.session(default=False)
def serve(session: nox.Session) -> None:
    """Serve the champion (or a given artifact) over the Open Inference Protocol."""
    _mlci(session, "serve")


@nox.session(default=False)
def loadtest(session: nox.Session) -> None:
    """Locust load test against a URL, gated on the SLO in mlci.toml (exit 1 when it fails)."""
    _mlci(session, "loadtest")


@nox.session(default=False)
def deploy(session: nox.Session) -> None:
    """Gated rolling deploy of the newest run that passed its gates to the serving hosts (-- --env NAME)."""
    _mlci(session, "deploy")


@nox.session(default=False)
def rollback(session: nox.Session) -> None:
    """Every serving host back on the previous champion, recorded in the ledger (-- --env NAME)."""
    _mlci(session, "rollback")


@nox.session(default=False)
def status(session: nox.Session) -> None:
    """[--env NAME]: the model each serving host serves (asked through SSH), checked against the champion."""
    _mlci(session, "status")


@nox.session(default=False)
def sandbox(session: nox.Session) -> None:
    """up|down|status [--hosts N]: SSH test hosts on the local Docker engine, written to inventories/sandbox."""
    _mlci(session, "sandbox")
