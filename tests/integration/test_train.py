"""`python -m mlci train` end to end, in real subprocesses, on a copy of the project in tmp_path.

The copy is a git checkout holding a snapshot of mlci's own source (imported through PYTHONPATH), the
bundled digits data and an mlci.toml with a short training, so the run key's code part is the copy's git
state and the tests never touch the repository's .mlci/. Tests in this module share one project and run in
order: each one states what the registry holds when it starts.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from mlci.artifacts import load_model, smoke_test
from mlci.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "numpy", "rich", "matplotlib")

pytestmark = pytest.mark.slow

SHORT = """
[train]
epochs = 3
batch_size = 64
lr = 0.002
seed = 0
device = "cpu"

[evaluate]
bootstrap = 200

[gates]
min_accuracy = 0.5
min_macro_f1 = 0.5
"""


def _git(where: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=mlci tests", "-c", "user.email=tests@mlci.invalid", *args],
        cwd=where, check=True, capture_output=True,
    )  # fmt: skip


def _toml(base: str) -> str:
    """The repository's mlci.toml with [train], [evaluate] and [gates] replaced by SHORT."""
    kept, skip = [], False
    for line in base.splitlines():
        if line.startswith("["):
            skip = line.split("#")[0].strip() in ("[train]", "[evaluate]", "[gates]")
        if not skip:
            kept.append(line)
    return "\n".join(kept) + "\n" + SHORT


def make_project(where: Path, *, git: bool = True) -> Path:
    where.mkdir(parents=True)
    shutil.copytree(ROOT / "python/mlci", where / "python/mlci", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "data", where / "data")
    (where / "mlci.toml").write_text(_toml((ROOT / "mlci.toml").read_text()))
    (where / ".gitignore").write_text("__pycache__/\n.mlci/\nreports/\n")
    if git:
        _git(where, "init", "-q")
        _git(where, "add", "-A")
        _git(where, "commit", "-q", "-m", "snapshot")
    return where


def mlci(project: Path, *args: str, python_flags: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(project / "python"))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return subprocess.run(
        [sys.executable, *python_flags, "-m", "mlci", *args],
        cwd=project, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def trained_id(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"^trained run (r\d+)", done.stdout, re.M)
    assert found, f"expected a training, got:\n{done.stdout}{done.stderr}"
    return found.group(1)


def registry_of(project: Path) -> Registry:
    return Registry(project / ".mlci/registry.db")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = make_project(tmp_path_factory.mktemp("train") / "project")
    assert trained_id(mlci(where, "train")) == "r0001"
    return where


def test_first_run_records_everything(project: Path) -> None:
    with registry_of(project) as registry:
        run = registry.run("r0001")
        assert run.status == "succeeded" and run.finished_at
        assert run.git_commit and len(run.git_commit) == 40 and not run.dirty
        assert run.params["train"]["epochs"] == 3 and run.data_hash
        env = run.environment
        assert env["device"] == "cpu" and env["precision"] == "fp32" and env["torch"] and env["python"]
        assert env["device_why"] == "train.device = cpu"  # the project's config chose it, and the run says so
        assert [s for s, _ in registry.history(run.id, "train_loss")] == [1, 2, 3]
        assert [s for s, _ in registry.history(run.id, "train_accuracy")] == [1, 2, 3]
        assert {"train_loss", "train_accuracy", "eval_accuracy"} <= set(run.metrics)
        artifact = run.artifact("model")
        assert artifact is not None and artifact.bytes > 0
        assert registry.latest_evaluation(run.id)["passed"] is True
        assert registry.champion().id == run.id
    model, manifest = load_model(Path(artifact.path))
    assert manifest["run_id"] == run.id and manifest["version"] == run.seq
    assert manifest["weights"]["sha256"] == artifact.sha256
    assert manifest["config"]["train"]["epochs"] == 3
    assert len(manifest["smoke"]["input"]) == 10  # one real training row per class
    smoke_test(model, manifest)
    assert (project / "reports/r0001/report.md").is_file()


def test_nothing_changed_is_up_to_date_without_importing_torch(project: Path) -> None:
    done = mlci(project, "train", python_flags=("-X", "importtime"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("up to date: run r0001")
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time")}
    assert "mlci.runkey" in imported  # the check really ran in this process
    assert not {m for m in imported if m.split(".")[0] in HEAVY}, "the no-op path imported a heavy module"
    with registry_of(project) as registry:
        assert len(registry.runs()) == 1


def test_force_twice_gives_identical_metrics_and_weights(project: Path) -> None:
    first = trained_id(mlci(project, "train", "--force"))
    second = trained_id(mlci(project, "train", "--force"))
    with registry_of(project) as registry:
        a, b = registry.run(first), registry.run(second)
        assert a.key == b.key == registry.run("r0001").key
        assert a.metrics == b.metrics
        for name in ("train_loss", "train_accuracy"):
            assert registry.history(a.id, name) == registry.history(b.id, name)
        assert a.artifact("model").sha256 == b.artifact("model").sha256


def test_changes_to_params_data_or_code_rerun(project: Path) -> None:
    with registry_of(project) as registry:
        before = len(registry.runs())

    params = trained_id(mlci(project, "train", "train.lr=0.001"))
    assert mlci(project, "train", "train.lr=0.001").stdout.startswith(f"up to date: run {params}")

    csv = project / "data/digits.csv"
    lines = csv.read_text().splitlines(keepends=True)
    first = lines[1].split(",")
    first[0] = "1" if first[0] != "1" else "2"  # one pixel of the first row, still valid
    lines[1] = ",".join(first)
    csv.write_text("".join(lines))
    data = trained_id(mlci(project, "train"))

    model_py = project / "python/mlci/model.py"
    model_py.write_text(model_py.read_text() + "\n# an edit to the code\n")
    code = trained_id(mlci(project, "train"))

    with registry_of(project) as registry:
        runs = {r.id: r for r in registry.runs()}
        assert len(runs) == before + 3
        assert runs[params].params["train"]["lr"] == 0.001
        assert runs[data].data_hash != runs[params].data_hash
        assert runs[code].dirty and runs[code].data_hash == runs[data].data_hash  # data/ is tracked: dirty too
        assert len({runs[i].key for i in (params, data, code)}) == 3
    assert mlci(project, "train").stdout.startswith(f"up to date: run {code}")


def test_a_failed_gate_exits_1_and_the_no_op_repeats_the_verdict(project: Path) -> None:
    strict = "gates.min_accuracy=0.9999"
    first = mlci(project, "train", strict)
    assert first.returncode == 1, first.stdout + first.stderr
    assert re.search(r"^trained run r\d+", first.stdout, re.M)
    again = mlci(project, "train", strict)
    assert again.returncode == 1
    assert again.stdout.startswith("up to date: run") and "gates FAILED" in again.stdout
    assert "failed gate min_accuracy" in again.stdout


def test_two_trainings_started_at_once_train_once(project: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(project / "python"))
    cmd = [sys.executable, "-m", "mlci", "train", "train.seed=7"]
    procs = [
        subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    stdouts = sorted(o for o, _ in outs)
    assert sum(o.startswith("up to date: run") for o in stdouts) == 1
    assert sum(bool(re.search(r"^trained run", o, re.M)) for o in stdouts) == 1
    with registry_of(project) as registry:
        seeded = [r for r in registry.runs() if r.params["train"]["seed"] == 7]
        assert len(seeded) == 1 and seeded[0].status == "succeeded"


def test_ddp_with_two_cpu_processes_gives_a_normal_run(project: Path) -> None:
    run_id = trained_id(mlci(project, "train", "--nproc", "2"))
    with registry_of(project) as registry:
        run = registry.run(run_id)
        assert run.status == "succeeded"
        assert run.params["train"]["nproc"] == 2 and run.environment["nproc"] == 2
        assert [s for s, _ in registry.history(run.id, "train_loss")] == [1, 2, 3]
        assert run.metrics["train_accuracy"] > 0.5
        assert registry.latest_evaluation(run.id) is not None
        artifact = run.artifact("model")
    model, manifest = load_model(Path(artifact.path))
    assert manifest["run_id"] == run_id
    smoke_test(model, manifest)
    # train.nproc is part of the key: the 2-process run is reused by the next 2-process call.
    assert mlci(project, "train", "--nproc", "2").stdout.startswith(f"up to date: run {run_id}")


# --- bad data: nothing is written --------------------------------------------------------------------------


def _break(project: Path) -> None:
    csv = project / "data/digits.csv"
    lines = csv.read_text().splitlines(keepends=True)
    cells = lines[5].split(",")
    cells[3] = "abc"
    lines[5] = ",".join(cells)
    csv.write_text("".join(lines))


def test_bad_data_creates_no_registry(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", git=False)
    _break(project)
    done = mlci(project, "train")
    assert done.returncode == 2
    assert "Error: data/digits.csv: row 5: column 'px_0_3': value 'abc'" in done.stderr
    assert not (project / ".mlci").exists()


def test_bad_data_leaves_an_existing_registry_unchanged(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", git=False)
    db = project / ".mlci/registry.db"
    with Registry(db) as registry:  # a registry holding an earlier run
        old = registry.create_run("an-earlier-key", params={}, environment={})
        registry.log_metric(old.id, "train_loss", 0.5, step=1)
        registry.finish_run(old.id)
    before = db.read_bytes()
    _break(project)
    done = mlci(project, "train")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "value 'abc'" in done.stderr
    assert db.read_bytes() == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["registry.db"]
    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 1
