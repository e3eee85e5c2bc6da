"""`mlci compare <base rev>`: the pull-request comparison. The checkout (head) goes through the pipeline; the base
revision is trained or reused in a temporary `git worktree` with its own code, data and config, recorded in
this checkout's registry; then head's report is written with a paired comparison against the base run and
copied to `compare.md` beside it, ready to post as a pull-request comment.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlci import pipeline
from mlci.atomic import write_text
from mlci.errors import EXIT_GATE_FAILED, EXIT_OK, UsageError

if TYPE_CHECKING:
    from mlci.config import Config
    from mlci.registry import Registry, Run


@dataclass(frozen=True)
class Comparison:
    head: pipeline.Outcome
    base: Run
    base_commit: str
    base_trained: bool  # False: a run of that commit was reused
    markdown: Path

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.head.passed else EXIT_GATE_FAILED


def compare(config: Config, rev: str, *, hooks: pipeline.Hooks = pipeline.SILENT) -> Comparison:
    from mlci.registry import Registry
    from mlci.report import write_report

    commit = commit_of(config.root, rev)
    if commit is None:
        raise UsageError(f"compare: {rev!r} is not a git revision in {config.root}")
    head = pipeline.run(config, hooks=hooks)
    db = config.path(config.registry.path)
    with Registry(db) as registry:
        base = base_run(registry, commit)
    trained = base is None
    if base is None:
        train_in_worktree(config, commit)
        with Registry(db) as registry:
            base = base_run(registry, commit)
        if base is None:
            raise UsageError(f"compare: training {rev} ({commit[:12]}) in a worktree left no succeeded run")
    with Registry(db) as registry:
        folder = write_report(config, registry, registry.run(head.run.id), compare=base.id)
        stored = registry.latest_evaluation(base.id)
    markdown = folder / "compare.md"
    text = (folder / "report.md").read_text(encoding="utf-8")
    verdict = "not evaluated" if stored is None else "gates passed" if stored["passed"] else "gates FAILED"
    intro = (
        f"Compared with base `{rev}` ({commit[:12]}, run {base.id}, {verdict}): "
        f"the paired differences are head − base.\n\n"
    )
    write_text(markdown, intro + text)
    return Comparison(head, base, commit, trained, markdown)


def commit_of(root: Path, rev: str) -> str | None:
    """The commit `rev` names in the checkout at `root`, or None."""
    if rev.startswith("-"):  # never let a revision become an option of git
        return None
    done = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"],
        cwd=root, capture_output=True, text=True, check=False,
    )  # fmt: skip
    return done.stdout.strip() or None if done.returncode == 0 else None


def base_run(registry: Registry, commit: str) -> Run | None:
    """The newest succeeded run of `commit` (clean checkout) whose model artifact is on disk."""
    for run in reversed(registry.runs()):
        model = run.artifact("model")
        clean = run.git_commit == commit and not run.dirty and run.status == "succeeded"
        if clean and model is not None and Path(model.path).is_dir():
            return run
    return None


def train_in_worktree(config: Config, commit: str) -> None:
    """`mlci train` of the base commit's own code, data and config in a temporary worktree, recorded in this
    checkout's registry, artifacts and reports. Its gate verdict does not matter here; a crash does."""
    root = Path(config.root).resolve()
    top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True)
    toplevel = Path(top.stdout.strip())
    where = Path(tempfile.mkdtemp(prefix="mlci-compare-"))
    tree = where / "base"
    try:
        added = subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), commit], cwd=toplevel, capture_output=True, text=True
        )
        if added.returncode != 0:
            raise UsageError(f"compare: git worktree add {commit[:12]} failed: {added.stderr.strip()}")
        project = tree / root.relative_to(toplevel)
        env = dict(os.environ)
        if (tree / "python" / "mlci").is_dir():  # mlci's own repository: the base runs its own mlci
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree / "python"), env.get("PYTHONPATH")]))
        reg = config.registry
        overrides = [
            f'registry.path="{config.path(reg.path).resolve()}"',
            f'registry.artifacts="{config.path(reg.artifacts).resolve()}"',
            f'registry.reports="{config.path(reg.reports).resolve()}"',
        ]
        config_file = project / Path(config.source).name
        done = subprocess.run(
            [sys.executable, "-m", "mlci", "train", "--config", str(config_file), *overrides],
            cwd=project, env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode not in (EXIT_OK, EXIT_GATE_FAILED):
            why = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
            raise UsageError(f"compare: training base {commit[:12]} failed (exit {done.returncode}): {why[0]}")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=toplevel, capture_output=True)
        shutil.rmtree(where, ignore_errors=True)
