"""`mlci compare BASE` on a real git history: the base commit is trained in a temporary worktree with its own
config, this checkout as it stands, both into one registry; the comment's delta is checked against the two models'
own predictions on the evaluation split, computed here with torch."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from deploy_support import Project, copy_project, set_keys, tail

from mlci.artifacts import load_model
from mlci.config import load_config
from mlci.evaluate import eval_split

pytestmark = pytest.mark.slow

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.org"}  # fmt: skip


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=root, env={**os.environ, **GIT_ENV}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> tuple[Project, str, str]:
    """A project with two commits: the base, and a change that trains with another seed and learning rate."""
    root = copy_project(tmp_path_factory.mktemp("compare") / "project")
    set_keys(root / "mlci.toml", train={"epochs": 5}, evaluate={"bootstrap": 200})
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "base")
    base = git(root, "rev-parse", "HEAD")
    set_keys(root / "mlci.toml", train={"epochs": 5, "seed": 7, "lr": 0.001})
    git(root, "commit", "-q", "-am", "change")
    return Project(root), base, git(root, "rev-parse", "HEAD")


def accuracy(project: Project, artifact: str) -> float:
    model, _ = load_model(Path(artifact))
    ds = eval_split(load_config(project.config))
    with torch.inference_mode():
        predicted = model(torch.from_numpy(ds.x)).argmax(1).numpy()
    return float((predicted == ds.y).mean())


def test_compare_trains_both_sides_and_writes_the_paired_delta(history) -> None:
    project, base, head = history
    out = project.mlci("compare", "HEAD~1", rc=None, timeout=1200)
    assert out.returncode in (0, 1), tail(out)
    with project.registry() as registry:
        runs = {r.git_commit: r for r in registry.runs()}
    assert set(runs) == {base, head}, "one run per side, each with its own commit"
    base_run, head_run = runs[base], runs[head]
    assert base_run.params["train"]["seed"] == 0 and head_run.params["train"]["seed"] == 7  # each side's own config
    comment = project.root / "reports" / "compare" / f"{head_run.id}-vs-{base_run.id}" / "comment.md"
    text = comment.read_text()
    assert f"base {base_run.id}" in text and f"change {head_run.id}" in text
    assert "![metrics](metrics.png)" in text and (comment.parent / "metrics.png").stat().st_size > 0
    assert (comment.parent / "loss.png").stat().st_size > 0
    # The accuracy row: base, change, change - base; the delta's point is the two models' own difference.
    row = next(line for line in text.splitlines() if line.startswith("| accuracy |"))
    points = [float(v) for v in re.findall(r"([+-]?\d\.\d{4}) \[", row)]
    want = accuracy(project, head_run.artifact("model").path) - accuracy(project, base_run.artifact("model").path)
    assert points[2] == pytest.approx(want, abs=1e-4), row
    assert points[2] == pytest.approx(points[1] - points[0], abs=2e-4)
    verdict = "PASSED" if out.returncode == 0 else "FAILED"
    assert f"**{verdict}" in text and "| base |" in text


def test_a_second_compare_reuses_both_runs(history) -> None:
    project, _, _ = history
    with project.registry() as registry:
        before = [r.id for r in registry.runs()]
    again = project.mlci("compare", "HEAD~1", rc=None, timeout=600)
    assert again.returncode in (0, 1), tail(again)
    assert "up to date: run" in again.stdout and "reusing the base" not in again.stdout
    with project.registry() as registry:
        assert [r.id for r in registry.runs()] == before


def test_a_base_that_is_no_revision_is_a_usage_error(history) -> None:
    project, _, _ = history
    out = project.mlci("compare", "no-such-branch", rc=2)
    assert "compare 'no-such-branch': not a git revision" in out.stderr, tail(out)
