"""The run key changes with code, data, params and environment, and only with them.

Projects are copies of the bundled example in tmp_path, some of them git checkouts (real git).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlci.config import load_config
from mlci.data import data_files
from mlci.runkey import RunKey, compute

ROOT = Path(__file__).resolve().parents[2]


def make_project(where: Path, *, git: bool) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "data", where / "data")
    shutil.copy(ROOT / "mlci.toml", where / "mlci.toml")
    (where / ".gitignore").write_text(".mlci/\nreports/\n")
    (where / "models.py").write_text("# the project's own code\n")
    if git:
        _git(where, "init", "-q")
        _git(where, "add", "-A")
        _git(where, "commit", "-q", "-m", "initial")
    return where


def _git(where: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-c", "user.name=mlci tests", "-c", "user.email=tests@mlci.invalid", *args],
        cwd=where, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout


def key_of(project: Path, *overrides: str) -> RunKey:
    config = load_config(project / "mlci.toml", overrides)
    return compute(config, data_files(config))


@pytest.fixture(params=[True, False], ids=["git", "no-git"])
def project(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return make_project(tmp_path / "p", git=request.param)


def test_same_inputs_same_key(project: Path) -> None:
    assert key_of(project).key == key_of(project).key


def test_params_change_the_key(project: Path) -> None:
    base = key_of(project)
    changed = key_of(project, "train.lr=0.001")
    assert changed.key != base.key
    assert changed.params_hash != base.params_hash
    assert changed.data_hash == base.data_hash and changed.code == base.code


def test_data_change_changes_the_key(project: Path) -> None:
    base = key_of(project)
    csv = project / "data/digits.csv"
    lines = csv.read_text().splitlines(keepends=True)
    lines[1] = lines[1].replace("0,", "1,", 1)  # one pixel of the first row
    csv.write_text("".join(lines))
    changed = key_of(project)
    assert changed.data_hash != base.data_hash and changed.key != base.key


def test_schema_change_changes_the_key(project: Path) -> None:
    base = key_of(project)
    schema = project / "data/schema.toml"
    schema.write_text(schema.read_text() + "\n# a comment is a change too\n")
    assert key_of(project).key != base.key


def test_environment_is_part_of_the_key(project: Path) -> None:
    # train.device=cpu vs cuda: the device kind enters the key (as well as the param itself).
    assert key_of(project, "train.device=cpu").device == "cpu"
    assert key_of(project, "train.device=cuda").device == "cuda"


def test_git_code_changes(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", git=True)
    clean = key_of(project)
    assert clean.git_commit == _git(project, "rev-parse", "HEAD").strip()
    assert not clean.dirty

    (project / ".mlci").mkdir(exist_ok=True)  # the data hash cache may be there already
    (project / ".mlci/registry.db").write_bytes(b"ignored by git: not code")
    assert key_of(project).key == clean.key, "an ignored file must not change the key"

    (project / "models.py").write_text("# the project's own code, edited\n")
    edited = key_of(project)
    assert edited.key != clean.key and edited.dirty
    assert edited.git_commit == clean.git_commit

    _git(project, "commit", "-q", "-am", "edit")
    committed = key_of(project)
    assert not committed.dirty and committed.git_commit != clean.git_commit
    assert committed.code.digest != edited.code.digest  # a different tree id, no diff

    (project / "new_module.py").write_text("x = 1\n")
    untracked = key_of(project)
    assert untracked.key != committed.key and untracked.dirty
    (project / "new_module.py").write_text("x = 2\n")
    assert key_of(project).key != untracked.key, "untracked files count by content"


def test_mlci_outputs_are_not_code_even_without_gitignore(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", git=True)
    (project / ".gitignore").unlink()
    _git(project, "commit", "-q", "-am", "no .gitignore")
    clean = key_of(project)
    for name in (".mlci/registry.db", ".mlci/registry.db-wal", ".mlci/registry.db.lock", ".mlci/artifacts/ab/x"):
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_bytes(b"written by mlci")
    (project / "reports/r0001").mkdir(parents=True)
    (project / "reports/r0001/report.md").write_text("# report\n")
    assert key_of(project).key == clean.key
    (project / "notes.py").write_text("# but a new source file counts\n")
    assert key_of(project).key != clean.key


def test_no_git_hashes_the_factory_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = make_project(tmp_path / "p", git=False)
    (project / "mymodels.py").write_text("from mlci.model import mlp as net\n")
    monkeypatch.syspath_prepend(str(project))
    base = key_of(project, 'model.factory="mymodels:net"')
    assert base.git_commit is None
    (project / "mymodels.py").write_text("from mlci.model import mlp as net  # edited\n")
    assert key_of(project, 'model.factory="mymodels:net"').key != base.key


def test_missing_data_file_still_gives_a_key(tmp_path: Path) -> None:
    # The data check reports the missing file afterwards, with its name; the key must not crash first.
    project = make_project(tmp_path / "p", git=False)
    (project / "data/digits.csv").unlink()
    assert len(key_of(project).key) == 64


def test_computing_the_key_imports_no_torch(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", git=True)
    code = (
        "import sys; from mlci.config import load_config; from mlci.data import data_files; "
        "from mlci.runkey import compute; c = load_config(sys.argv[1]); compute(c, data_files(c)); "
        "print(sorted(m for m in ('torch', 'numpy', 'rich', 'matplotlib') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(project / "mlci.toml")], capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]"
