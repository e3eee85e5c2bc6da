"""Runs that end abnormally, with real `mlci train` processes: SIGTERM and SIGINT record the run `failed`
("interrupted by SIGTERM"), release its locks and leave no half-written artifact; after SIGKILL the next mlci
command on the registry finds the run abandoned and marks it `failed`."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from tests.integration.test_train import make_project, mlci, registry_of

from mlci.registry import Registry

pytestmark = pytest.mark.slow

LONG = "train.epochs=100000"  # far longer than the test waits: only a signal ends it


def _start_training(project: Path, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(project / "python"))
    return subprocess.Popen(
        [sys.executable, "-m", "mlci", "train", LONG, *args],
        cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_until_training(project: Path, proc: subprocess.Popen[str], run_id: str = "r0001") -> None:
    """Until the run has logged an epoch (it is inside training, holding its lock), at most 180 s."""
    db = project / ".mlci/registry.db"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if (project / f".mlci/runs/{run_id}.lock").exists() and db.exists():
            with Registry(db) as registry:
                if registry.history(run_id, "train_loss"):
                    return
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"run {run_id} never started training: {proc.communicate()}")


def _assert_nothing_half_written(project: Path) -> None:
    artifacts = project / ".mlci/artifacts"
    assert not artifacts.exists() or not [p.name for p in artifacts.iterdir() if p.name.startswith(".staging")]
    assert not list((project / ".mlci/runs").glob("r*.lock")), "the run's lock file outlived it"


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_records_the_run_failed_and_releases_its_locks(tmp_path: Path, signum: int, code: int) -> None:
    project = make_project(tmp_path / "p")
    proc = _start_training(project)
    _wait_until_training(project, proc)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    name = signal.Signals(signum).name
    assert proc.returncode == code, out + err
    assert f"Error: interrupted by {name}" in err
    with registry_of(project) as registry:
        run = registry.run("r0001")
        assert run.status == "failed" and run.error == f"interrupted by {name}" and run.finished_at
        assert run.artifact("model") is None
    _assert_nothing_half_written(project)
    # The training lock is free: the next training starts at once and succeeds.
    again = mlci(project, "train")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "trained run r0002" in again.stdout


def test_a_run_killed_with_sigkill_is_marked_abandoned_by_the_next_command(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    proc = _start_training(project)
    _wait_until_training(project, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    with sqlite3.connect(project / ".mlci/registry.db") as raw:  # not Registry: opening that sweeps
        assert raw.execute("SELECT status FROM runs WHERE id = 'r0001'").fetchone() == ("running",)
    done = mlci(project, "train")  # the next mlci command on this registry
    assert done.returncode == 0, done.stdout + done.stderr
    assert "trained run r0002" in done.stdout
    with registry_of(project) as registry:
        run = registry.run("r0001")
        assert run.status == "failed" and run.error.startswith("abandoned") and run.finished_at
    _assert_nothing_half_written(project)


def test_a_running_run_whose_process_lives_is_left_alone(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    proc = _start_training(project)
    try:
        _wait_until_training(project, proc)
        mlci(project, "evaluate", "--run", "r0001")  # another command opens the registry meanwhile
        with registry_of(project) as registry:
            assert registry.run("r0001").status == "running"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)


def test_sigterm_during_data_parallel_training_stops_every_worker(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    proc = _start_training(project, "--nproc", "2")
    _wait_until_training(project, proc)
    tree = psutil.Process(proc.pid).children(recursive=True)  # torchrun and its two workers
    assert len(tree) >= 3, tree
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out + err
    _gone, alive = psutil.wait_procs(tree, timeout=60)
    assert not alive, f"left running: {alive}"
    with registry_of(project) as registry:
        run = registry.run("r0001")
        assert run.status == "failed" and run.error == "interrupted by SIGTERM"
    _assert_nothing_half_written(project)
