"""`mlci periodic`: what cron runs on runners. One at a time; a no-op when nothing changed; otherwise the
pipeline (data check -> train -> evaluate -> gates -> report), a deploy when the run passed and
`periodic.deploy` is true, old reports pruned, and the verdict sent to the webhook.

The lock is an flock on `.mlci/periodic.lock` holding who has it ("periodic run by pid N on HOST since T"); the
kernel releases it when the process ends, however it ends. A second run that finds it held does nothing.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import platform
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlci import pipeline
from mlci.errors import EXIT_GATE_FAILED, MlciError

if TYPE_CHECKING:
    from mlci.config import Config
    from mlci.registry import Registry

LOCK = ".mlci/periodic.lock"
_RUN_DIR = re.compile(r"r\d{4,}")
# Ledger outcomes after which the entry's run serves in the entry's environment.
_SERVING_OUTCOMES = ("promoted", "passed staging", "rolled back")


@dataclass(frozen=True)
class Result:
    locked_by: str | None = None  # another periodic run holds the lock: nothing was done
    outcome: pipeline.Outcome | None = None
    deployed: str | None = None  # the deploy's outcome ("promoted", "up to date", ...) when one ran and passed
    deploy_error: str | None = None
    deploy_exit: int = 0
    pruned: list[str] = field(default_factory=list)  # report folders deleted
    webhook: str | None = None  # what the webhook delivery said (None: no webhook configured, or a no-op)

    @property
    def exit_code(self) -> int:
        if self.outcome is None:
            return 0
        return self.deploy_exit or self.outcome.exit_code


def run(
    config: Config,
    *,
    overrides: list[str] | None = None,
    hooks: pipeline.Hooks = pipeline.SILENT,
    progress: Callable[[str], None] = lambda _m: None,
) -> Result:
    with locked(config) as holder:
        if holder is not None:
            return Result(locked_by=holder)
        outcome = pipeline.run(config, hooks=hooks)
        if outcome.up_to_date:
            return Result(outcome=outcome)
        deployed, error, code = None, None, 0
        if outcome.passed and config.periodic.deploy:
            try:
                deployed = pipeline.deploy(config, outcome.run, overrides=overrides, progress=progress).outcome
            except MlciError as exc:
                error, code = str(exc), exc.exit_code or EXIT_GATE_FAILED
        pruned = prune_reports(config)
        result = Result(outcome=outcome, deployed=deployed, deploy_error=error, deploy_exit=code, pruned=pruned)
        if config.periodic.webhook_env:
            from mlci import webhook

            delivery = webhook.post(config.periodic.webhook_env, verdict(config, result))
            result = dataclasses.replace(result, webhook=delivery.message)
        return result


def verdict(config: Config, result: Result) -> dict[str, Any]:
    """The webhook's JSON: run id, verdict, metrics, gate results, deployed or not."""
    outcome = result.outcome
    assert outcome is not None
    return {
        "project": config.project.name,
        "host": platform.node(),
        "run_id": outcome.run.id,
        "git_commit": outcome.run.git_commit,
        "verdict": "passed" if outcome.passed else "failed",
        "metrics": outcome.metrics,
        "gates": outcome.gates,
        "deployed": result.deployed in ("promoted", "passed staging", "up to date"),
        "deploy": {"enabled": config.periodic.deploy, "outcome": result.deployed, "error": result.deploy_error},
        "report": str(outcome.report / "report.html") if outcome.report else None,
    }


# --- one periodic run at a time ----------------------------------------------------------------------------------


@contextmanager
def locked(config: Config) -> Iterator[str | None]:
    """Yield None holding the periodic lock, or who holds it ("periodic run by pid N on HOST since T")."""
    path = config.path(LOCK)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held_elsewhere = False
        except BlockingIOError:
            held_elsewhere = True
        if held_elsewhere:
            # The holder writes its line right after locking: a moment's wait covers that window.
            holder = ""
            for _ in range(20):
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
                if holder:
                    break
                time.sleep(0.01)
            yield holder or "periodic run by another process"
            return
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"periodic run by pid {os.getpid()} on {platform.node()} since {since}\n".encode(), 0)
        try:
            yield None
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the flock


# --- keep the last N reports --------------------------------------------------------------------------------------


def prune_reports(config: Config) -> list[str]:
    """Delete run report folders beyond the newest `periodic.keep_reports`, never the champion's or a serving
    run's. Returns the deleted folders' run ids."""
    keep = config.periodic.keep_reports
    root = config.path(config.registry.reports)
    if keep == 0 or not root.is_dir():
        return []
    from mlci.registry import open_registry

    with open_registry(config) as registry:
        protected = protected_runs(registry)
        folders = sorted((p for p in root.iterdir() if p.is_dir() and _RUN_DIR.fullmatch(p.name)), key=_seq)
        deleted = []
        for folder in reversed(folders[:-keep]):
            if folder.name not in protected:
                shutil.rmtree(folder, ignore_errors=True)
                deleted.append(folder.name)
        if deleted:  # the dashboard links only to reports that exist
            from mlci import dashboard

            dashboard.write(config, registry)
    return deleted


def protected_runs(registry: Registry) -> set[str]:
    """The champion and, per environment, the run its last deploy or rollback left serving."""
    champion = registry.champion()
    serving: dict[str, str] = {}
    for entry in registry.ledger():
        env = entry.evidence.get("env")
        if entry.outcome in _SERVING_OUTCOMES and env:
            serving[str(env)] = entry.run_id
    return set(serving.values()) | ({champion.id} if champion else set())


def _seq(folder: Path) -> int:
    return int(folder.name[1:])
