"""Training across a fleet: `mlci train --fleet NAME` runs torchrun on 2 sandbox runners (gloo on CPU, a static
rendezvous on the first) and the run lands in the controller's registry like any other.

Two sandbox hosts play the runners (the sandbox's own runner and its first serving host, in an inventory of their
own). What each node did is read from its own training log on the host; the model is checked against the same
training done on this machine by two local processes (same world size, same seed, same shards).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from deploy_support import Project, copy_project, set_keys, tail
from safetensors.torch import load_file

from mlci.artifacts import load_model, smoke_test
from mlci.sandbox import SandboxHost, connect

pytestmark = [pytest.mark.sandbox, pytest.mark.slow]

ENV = "fleet"
RUNS = "/opt/mlci-train/runs"


@dataclass
class Fleet:
    project: Project
    nodes: list[SandboxHost]
    first: str  # the first `mlci train --fleet` output

    def sh(self, node: SandboxHost, command: str) -> str:
        code, out = connect().containers.get(node.container).exec_run(["sh", "-c", command])
        text = out.decode(errors="replace")
        assert code == 0, f"{node.name}: {command}: exit {code}: {text}"
        return text


@pytest.fixture(scope="module")
def fleet(sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    nodes = [sandbox.group("gpu_runners")[0], sandbox.group("serving")[0]]
    root = copy_project(tmp_path_factory.mktemp("train-fleet") / "project")
    inventory = root / "inventories" / ENV
    shutil.copytree(sandbox.inventory, inventory)
    hosts = {n.name: {"ansible_port": n.ssh_port, "sandbox_address": n.address} for n in nodes}
    layout = {"all": {"hosts": hosts, "children": {"gpu_runners": {"hosts": dict.fromkeys(hosts)}}}}
    (inventory / "hosts.yml").write_text(yaml.safe_dump(layout, sort_keys=False))
    set_keys(root / "mlci.toml", train={"epochs": 10}, evaluate={"bootstrap": 200})
    project = Project(root)
    first = project.mlci("train", "--fleet", ENV, timeout=1800)
    try:
        yield Fleet(project, nodes, first.stdout)
    finally:
        for node in nodes:
            connect().containers.get(node.container).exec_run(["rm", "-rf", "/opt/mlci-train"])


def test_a_fleet_run_trains_on_both_runners_and_lands_in_the_registry(fleet: Fleet) -> None:
    assert f"on fleet {ENV} ({fleet.nodes[0].name}, {fleet.nodes[1].name}; 2 processes)" in fleet.first, fleet.first
    with fleet.project.registry() as registry:
        run = registry.latest_run()
        assert run is not None and run.status == "succeeded"
        assert run.environment["world_size"] == 2 and run.environment["nodes"] == [n.name for n in fleet.nodes]
        steps = registry.history(run.id, "train_loss")
        artifact = run.artifact("model")
    assert len(steps) == 10  # one loss per epoch, sent back by rank 0
    # Each node ran its own rank in one 2-process world, rendezvous on the first.
    for rank, node in enumerate(fleet.nodes):
        log = fleet.sh(node, f"cat {RUNS}/{run.id}/train.log")
        assert f"{node.name}: rank {rank} of 2 on cpu" in log, log
    # The stored artifact is whole: its weights hash to what the registry says, and its smoke test passes.
    assert artifact is not None
    weights = Path(artifact.path) / "model.safetensors"
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == artifact.sha256
    model, manifest = load_model(Path(artifact.path))
    assert manifest["run_id"] == run.id
    smoke_test(model, manifest)
    # The pipeline went on as for any run: evaluated against the gates, with a report.
    assert "gates passed" in fleet.first, fleet.first
    assert (fleet.project.root / "reports" / run.id / "report.html").is_file()


def test_the_fleet_model_is_the_one_two_local_processes_train(fleet: Fleet) -> None:
    with fleet.project.registry() as registry:
        fleet_run = registry.latest_run()
    local = fleet.project.mlci("train", "--nproc", "2", timeout=900)
    assert "gates passed" in local.stdout, tail(local)
    with fleet.project.registry() as registry:
        local_run = registry.latest_run()
    assert local_run.id != fleet_run.id
    a = load_file(str(Path(fleet_run.artifact("model").path) / "model.safetensors"))
    b = load_file(str(Path(local_run.artifact("model").path) / "model.safetensors"))
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-3, f"fleet and local 2-process weights differ by up to {worst}"
    assert torch.equal(a["standardize.mean"], b["standardize.mean"])


def test_a_second_fleet_train_with_nothing_changed_is_a_no_op(fleet: Fleet) -> None:
    again = fleet.project.mlci("train", "--fleet", ENV)
    assert "up to date: run r0001" in again.stdout, tail(again)


def test_a_fleet_without_runners_is_a_config_error(fleet: Fleet) -> None:
    empty = fleet.project.root / "inventories" / "empty"
    empty.mkdir()
    (empty / "hosts.yml").write_text(json.dumps({"all": {"children": {"serving": {"hosts": {}}}}}))
    out = fleet.project.mlci("train", "--fleet", "empty", "--force", rc=2)
    assert f"{empty}: group 'gpu_runners' does not exist" in out.stderr, tail(out)
