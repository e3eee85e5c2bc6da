"""`python -m mlci compare <base rev>` on a real git history of a copy of the project: the base revision is
trained by its own code in a temporary worktree, recorded in the checkout's registry, and the checkout's report
gains a paired comparison with it, copied to compare.md for a pull-request comment."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from tests.integration.test_train import _git, make_project, mlci, registry_of

pytestmark = pytest.mark.slow


def test_compare_trains_the_base_in_a_worktree_and_writes_a_pull_request_comment(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    toml = project / "mlci.toml"
    toml.write_text(toml.read_text().replace("lr = 0.002", "lr = 0.004"))
    _git(project, "commit", "-qam", "a faster learning rate")

    done = mlci(project, "compare", "HEAD~1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^trained run r0001", done.stdout, re.M)
    assert f"base: run r0002 of HEAD~1 ({base[:12]}), trained in a temporary worktree" in done.stdout
    with registry_of(project) as registry:
        head, other = registry.run("r0001"), registry.run("r0002")
        assert head.params["train"]["lr"] == 0.004 and other.params["train"]["lr"] == 0.002
        assert other.git_commit == base and not other.dirty and other.status == "succeeded"
    comment = (project / "reports/r0001/compare.md").read_text()
    assert comment.startswith(f"Compared with base `HEAD~1` ({base[:12]}, run r0002, gates passed)")
    assert "candidate − r0002" in comment  # the paired-difference column
    assert "min_accuracy" in comment and "![" in comment  # gate verdicts and plots
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=project, capture_output=True, text=True).stdout
    assert len(worktrees.splitlines()) == 1, "the temporary worktree was left behind"

    again = mlci(project, "compare", "HEAD~1")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith("up to date: run r0001") and "base: run r0002" in again.stdout
    assert "reused" in again.stdout


def test_compare_with_an_unknown_revision_is_a_usage_error(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    done = mlci(project, "compare", "no-such-branch")
    assert done.returncode == 2
    assert "Error: compare: 'no-such-branch' is not a git revision" in done.stderr
