"""The model server's offline wheelhouse: complete (a fresh venv installs it with no index and serves), cached,
and versioned by content."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from importlib import metadata
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from mlci.deploy.wheelhouse import SERVING_REQUIREMENTS, Wheelhouse, build, serving_pins
from mlci.errors import WheelhouseError

ROOT = Path(__file__).resolve().parents[2]
READY = re.compile(r"^mlci serve ready (\{.*\})$", re.M)
# What `python -m mlci serve` runs first; every mlci module they import (at any depth) is on the serve path.
SERVE_ENTRY = ("mlci.__main__", "mlci.cli", "mlci.commands.serve")
CONTROLLER_ONLY = ("locust", "ansible", "ansible-core", "matplotlib", "rich", "docker", "paramiko", "mitogen")
# Imported on the serve path only for what a serving host never does, each with why it may be missing there.
NOT_ON_SERVING_HOSTS = {
    "psycopg": "a PostgreSQL registry (mlci serve without --artifact); missing, it is a RegistryError saying so",
}


def _imports(module: str) -> set[str]:
    """Every module `module`'s source imports, at module level or inside functions."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    found: set[str] = set()
    for node in ast.walk(ast.parse(Path(spec.origin).read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from mlci.serve import loaded` imports the submodule mlci.serve.loaded
            found.update(f"{node.module}.{a.name}" for a in node.names if _is_module(f"{node.module}.{a.name}"))
    return found


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


def _serve_path_third_party() -> dict[str, str]:
    """Third-party top-level module -> the mlci module on the serve path that imports it."""
    todo, seen, third = list(SERVE_ENTRY), set[str](), dict[str, str]()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for name in _imports(module):
            top = name.split(".")[0]
            if top == "mlci":
                parts = name.split(".")
                todo += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]  # packages run their __init__
            elif top not in sys.stdlib_module_names and top != "__future__":
                third.setdefault(top, module)
    return third


def test_serving_requirements_cover_every_import_on_the_serve_path() -> None:
    closure = {p.name for p in serving_pins()}
    dists = metadata.packages_distributions()
    missing = {
        top: by
        for top, by in _serve_path_third_party().items()
        if not any(canonicalize_name(d) in closure for d in dists.get(top, [])) and top not in NOT_ON_SERVING_HOSTS
    }
    assert not missing, f"imported on the serve path but not in SERVING_REQUIREMENTS' closure: {missing}"


def test_serving_pins_are_exact_and_leave_out_the_controller_tools() -> None:
    pins = {p.name: p.version for p in serving_pins()}
    assert pins["torch"] == metadata.version("torch")
    assert {canonicalize_name(r) for r in SERVING_REQUIREMENTS} <= pins.keys()
    assert not pins.keys() & {canonicalize_name(n) for n in CONTROLLER_ONLY}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wheelhouse-cache")


@pytest.fixture(scope="module")
def house(cache: Path) -> Wheelhouse:
    return build(ROOT, cache)


def _offline_pip_env() -> dict[str, str]:
    """No pip config file, no PIP_* settings: the wheelhouse alone must do (this machine's config adds indexes)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    return {**env, "PIP_CONFIG_FILE": os.devnull}


@pytest.mark.slow
def test_a_fresh_venv_without_pip_installs_the_wheelhouse_offline_and_serves(
    house: Wheelhouse, make_artifact, tmp_path: Path
):
    assert house.files == sorted(p.name for p in house.path.glob("*.whl"))
    assert (house.path / "requirements.txt").read_text().rstrip().splitlines()[-1].startswith("mlci==")
    # As the docker runtime's image does: a venv without pip, and pip run from its own wheel in the wheelhouse.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    (pip_wheel,) = house.path.glob("pip-*.whl")
    install = [str(python), str(pip_wheel / "pip"), "install", "--no-index", "--find-links", str(house.path)]
    install += ["-r", str(house.path / "requirements.txt")]
    done = subprocess.run(install, env=_offline_pip_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format=json"], env=_offline_pip_env(),
                            capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    installed = {canonicalize_name(d["name"]) for d in json.loads(listed.stdout)}
    assert not installed & {canonicalize_name(n) for n in CONTROLLER_ONLY}

    artifact = make_artifact()
    log = tmp_path / "serve.log"
    cmd = [str(python), "-m", "mlci", "serve", "--config", str(ROOT / "mlci.toml"), "--artifact", str(artifact.path)]
    cmd += ["serving.port=0", "serving.management_port=0"]
    with log.open("w") as out:
        # cwd outside the checkout, so the venv's installed mlci is the one that runs
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=_offline_pip_env(), stdout=out, stderr=subprocess.STDOUT)
    try:
        info = _wait_ready(proc, log, timeout_s=180)
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [3.0] * 64}]}
        request = urllib.request.Request(
            f"{info['url']}/v2/models/digits/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert info["url"].startswith("http://127.0.0.1:")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
            answer = json.loads(response.read())
        assert answer["outputs"] and answer["outputs"][0]["data"]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, log.read_text()[-3000:]


def _wait_ready(proc: subprocess.Popen[bytes], log: Path, *, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        match = READY.search(log.read_text(errors="replace"))
        if match:
            return json.loads(match.group(1))
        assert proc.poll() is None, f"server exited {proc.returncode}:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"no ready line in {timeout_s} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def pip_tripwire(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Any `python -m pip` started from now on runs a stand-in that leaves a mark and fails."""
    fake = tmp_path / "tripwire" / "pip"
    fake.mkdir(parents=True)
    mark = tmp_path / "pip-ran"
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text(f"import pathlib, sys\npathlib.Path({str(mark)!r}).touch()\nsys.exit(3)\n")
    monkeypatch.setenv("PYTHONPATH", str(fake.parent))
    # The tripwire itself must work, or the tests using it prove nothing.
    assert subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True, timeout=60).returncode == 3
    assert mark.exists()
    mark.unlink()
    return mark


@pytest.mark.slow
def test_a_rebuild_with_nothing_changed_reuses_the_wheelhouse_without_pip(house: Wheelhouse, cache: Path, pip_tripwire):
    again = build(ROOT, cache)
    assert again == house
    assert not pip_tripwire.exists()


def _copy_project(tmp_path: Path) -> Path:
    dest = tmp_path / "project"
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(ROOT / name, dest / name)
    shutil.copytree(ROOT / "python", dest / "python", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


@pytest.mark.slow
def test_the_digest_follows_the_content_of_mlci_sources(house: Wheelhouse, cache: Path, tmp_path: Path):
    project = _copy_project(tmp_path)
    # Same content elsewhere, other mtimes: the same server version.
    assert build(project, cache).digest == house.digest
    deps = {p.name: p.stat().st_mtime_ns for p in (cache / "deps").iterdir()}
    source = project / "python" / "mlci" / "serve" / "auth.py"
    source.write_text(source.read_text() + "\n# a change\n")
    changed = build(project, cache)
    assert changed.digest != house.digest
    assert changed.path != house.path
    # Only the mlci wheel was rebuilt: the same dependency wheels, none downloaded again.
    deps_of = lambda wh: [f for f in wh.files if not f.startswith("mlci-")]  # noqa: E731
    assert deps_of(changed) == deps_of(house)
    assert {p.name: p.stat().st_mtime_ns for p in (cache / "deps").iterdir()} == deps


def test_build_refuses_a_folder_that_is_no_checkout(tmp_path: Path) -> None:
    with pytest.raises(WheelhouseError, match=r"no pyproject\.toml"):
        build(tmp_path, tmp_path / "cache")
