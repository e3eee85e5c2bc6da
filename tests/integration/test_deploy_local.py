"""The embedded default, as a new user meets it: `nox -s train deploy` on a copy of the project with the
`inventories/local` inventory and the `local` runtime (a supervised `mlci serve` on this machine), no Docker
engine and no SSH.

The copy's `.venv` is a link to this checkout's stamped environment (same pyproject.toml), so nox installs
nothing. The copy's server listens on free ports picked for the test. What the server serves is asked of the
server itself (the Open Inference Protocol and its management API), never only of the registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from deploy_support import Project, copy_project, set_keys, tail, wait_for

from artifact_factory import FEATURES

pytestmark = pytest.mark.slow

VENV = Path(sys.prefix)
ROW = [float((7 * i) % 17) for i in range(len(FEATURES))]  # one 8x8 digit-shaped row, pixel values 0..16


@dataclass
class LocalDeploy:
    project: Project
    port: int
    management_port: int
    first: subprocess.CompletedProcess[str]
    first_s: float

    @property
    def root(self) -> Path:
        return self.project.root

    @property
    def serving(self) -> Path:
        return self.root / ".mlci" / "serving"

    def nox(self, *sessions: str, posargs: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess[str], float]:
        return _nox(self.root, *sessions, posargs=posargs)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def manage_status(self) -> dict:
        response = httpx.get(f"http://127.0.0.1:{self.management_port}/manage/status", timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def served_run(self) -> str | None:
        return (self.manage_status().get("current") or {}).get("run_id")

    def supervisor(self) -> psutil.Process:
        return psutil.Process(int((self.serving / "server.pid").read_text().split()[0]))


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _nox(root: Path, *sessions: str, posargs: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess[str], float]:
    """`python3 -m nox -s SESSIONS [-- POSARGS]` in the copy, .venv/bin first on PATH; (result, seconds)."""
    env = {
        **os.environ,
        "PATH": f"{root / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_NOCOLOR": "1",
        "NO_COLOR": "1",
        "COLUMNS": "200",
    }
    env.pop("VIRTUAL_ENV", None)
    command = ["python3", "-m", "nox", "-s", *sessions] + (["--", *posargs] if posargs else [])
    started = time.monotonic()
    run = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    return run, time.monotonic() - started


def _ready(d: LocalDeploy) -> bool:
    try:
        return httpx.get(d.url("/v2/health/ready"), timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _infer(d: LocalDeploy) -> dict:
    body = {"inputs": [{"name": "input", "shape": [1, len(ROW)], "datatype": "FP32", "data": ROW}]}
    response = httpx.post(d.url("/v2/models/digits/infer"), json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _ledger_length(d: LocalDeploy) -> int:
    with d.project.registry() as registry:
        return len(registry.ledger())


def _stop(root: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "mlci.deploy.local_server", "stop", "--root", str(root / ".mlci" / "serving")],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDeploy]:
    stamp = VENV / ".mlci-installed"
    wanted = hashlib.sha256((Path(__file__).resolve().parents[2] / "pyproject.toml").read_bytes()).hexdigest()
    if not (stamp.is_file() and stamp.read_text() == wanted and (VENV / "bin" / "python3").exists()):
        pytest.fail(f"{VENV} is not the project's stamped .venv (nox -s tests makes it): nox in the copy would install")
    root = copy_project(tmp_path_factory.mktemp("local") / "project")
    (root / ".venv").symlink_to(VENV, target_is_directory=True)
    port, management_port = _free_ports(2)
    set_keys(
        root / "mlci.toml",
        serving={"port": port, "management_port": management_port},
        train={"epochs": 10},
        evaluate={"bootstrap": 200},
        loadtest={"duration_s": 3},
    )
    try:
        first, seconds = _nox(root, "train", "deploy")
        yield LocalDeploy(Project(root), port, management_port, first, seconds)
    finally:
        _stop(root)


def test_first_train_deploy_promotes_run_1_and_the_server_outlives_nox(local: LocalDeploy) -> None:
    print(f"\nfirst `nox -s train deploy`: {local.first_s:.1f} s")
    assert local.first.returncode == 0, tail(local.first)
    assert "promoted: run r0001 serves on 1 host(s) of local" in local.first.stdout, tail(local.first)
    # nox has exited; the supervisor it started through the playbook still runs, and so does its server.
    assert local.supervisor().is_running()
    ready = httpx.get(local.url("/v2/health/ready"), timeout=10)
    assert ready.status_code == 200, ready.text
    answer = _infer(local)
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["output"]["shape"] == [1, 10] and len(outputs["output"]["data"]) == 10
    assert outputs["label"]["data"][0] in range(10)
    assert local.served_run() == "r0001" and local.project.champion() == "r0001"
    assert local.project.last_ledger().outcome == "promoted"


def test_second_train_deploy_has_nothing_to_do_and_leaves_the_server_as_it_was(local: LocalDeploy) -> None:
    supervisor = local.supervisor().pid
    before = local.manage_status()["current"]
    ledger = _ledger_length(local)

    second, seconds = local.nox("train", "deploy")

    print(f"\nsecond `nox -s train deploy`: {seconds:.1f} s")
    assert second.returncode == 0, tail(second)
    assert "up to date: run r0001 (" in second.stdout, tail(second)
    assert "up to date: run r0001 is serving on 1 host of local" in second.stdout, tail(second)
    assert "PLAY [" not in second.stdout  # no playbook ran
    assert local.supervisor().pid == supervisor and local.manage_status()["current"] == before
    assert _ledger_length(local) == ledger
    assert _ready(local) and _infer(local)["outputs"]


def test_a_second_run_is_promoted_and_rollback_puts_run_1_back_on_the_server(local: LocalDeploy) -> None:
    trained = local.project.mlci("train", "train.seed=3")
    assert "gates passed" in trained.stdout, tail(trained)
    with local.project.registry() as registry:
        assert registry.latest_run().id == "r0002"

    deployed, _ = local.nox("deploy")
    assert deployed.returncode == 0, tail(deployed)
    assert "promoted: run r0002 serves on 1 host(s) of local" in deployed.stdout, tail(deployed)
    assert local.served_run() == "r0002" and local.project.champion() == "r0002"
    status, _ = local.nox("status")
    assert status.returncode == 0, tail(status)
    assert "r0002" in status.stdout and "champion: r0002" in status.stdout, tail(status)

    rolled, _ = local.nox("rollback")
    assert rolled.returncode == 0, tail(rolled)
    served = local.manage_status()
    assert served["current"]["run_id"] == "r0001" and served["previous"]["run_id"] == "r0002", served
    assert local.project.champion() == "r0001"
    entry = local.project.last_ledger()
    assert (entry.run_id, entry.outcome, entry.hosts) == ("r0001", "rolled back", ["localhost"])
    assert _infer(local)["outputs"]


def test_the_supervisor_restarts_a_killed_server_on_the_same_model(local: LocalDeploy) -> None:
    before = local.manage_status()["current"]
    supervisor = local.supervisor()
    (server,) = supervisor.children()
    assert "serve" in server.cmdline()

    os.kill(server.pid, signal.SIGKILL)
    server.wait(timeout=10)

    def restarted() -> bool:
        children = supervisor.children()
        return bool(children) and children[0].pid != server.pid and _ready(local)

    wait_for(restarted, timeout=90, what="the supervisor to restart the killed server")
    after = local.manage_status()["current"]
    assert (after["run_id"], after["sha256"]) == (before["run_id"], before["sha256"]), json.dumps(after)
    assert _infer(local)["outputs"]
    assert supervisor.is_running() and supervisor.pid == local.supervisor().pid


def test_periodic_with_deploy_on_ships_its_new_run_and_a_no_op_ships_nothing(local: LocalDeploy) -> None:
    args = ("periodic.deploy=true", "train.seed=4")
    ran, _ = local.nox("periodic", posargs=args)
    assert ran.returncode == 0, tail(ran)
    with local.project.registry() as registry:
        new = registry.latest_run().id
    assert f"trained run {new}" in ran.stdout and "deploy: promoted" in ran.stdout, tail(ran)
    assert local.served_run() == new and local.project.champion() == new
    ledger = _ledger_length(local)
    again, _ = local.nox("periodic", posargs=args)
    assert again.returncode == 0, tail(again)
    assert again.stdout.startswith(f"up to date: run {new}") or f"up to date: run {new}" in again.stdout, tail(again)
    assert "PLAY [" not in again.stdout and _ledger_length(local) == ledger
