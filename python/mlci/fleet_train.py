"""Training across a fleet: torchrun on every host of an inventory's `gpu_runners` group at once.

`mlci train --fleet NAME` (train.fleet) runs playbooks/train.yml against inventories/NAME. Each runner gets a venv
from the offline wheelhouse (the server's wheels plus what the data check reads with), the run's job folder (its
resolved config, the data files and the schema) and starts torchrun with a static rendezvous on the group's first
host, its node rank its place in the group. Every node checks and splits its copy of the data (the same bytes
give the same split); rank 0 writes the model artifact and the metrics, which the play brings back. This module
checks them (the weights' sha256 against the manifest, the run id) and records them in this machine's registry,
so a fleet run lands in the registry like any other.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlci import data
from mlci.artifacts import MANIFEST_FILE, WEIGHTS_FILE, place, sha256_file
from mlci.config import Config
from mlci.errors import ConfigError, MlciError

if TYPE_CHECKING:
    from mlci.deploy.rollout import Target
    from mlci.registry import Registry, Run

GROUP = "gpu_runners"
JOB_FILE = "job.json"
METRICS_FILE = "metrics.json"
RESULT_FILES = (METRICS_FILE, MANIFEST_FILE, WEIGHTS_FILE)


class FleetTrainingFailed(MlciError):
    """The training play failed on a node (its log tail is in the play's output)."""


def runners(config: Config) -> Target:
    """The fleet's runners, in rank order; a fleet without any is a config error."""
    from mlci.deploy.rollout import target

    where = target(config, config.train.fleet, group=GROUP)
    if not where.hosts:
        raise ConfigError(f"train.fleet = {config.train.fleet!r}: {where.inventory} has no hosts in group {GROUP}")
    return where


def environment(config: Config, where: Target) -> dict[str, Any]:
    nproc = config.train.nproc
    return {
        "hostname": platform.node(),  # the controller's: whose lock says the run is alive (runlock)
        "fleet": where.env,
        "nodes": where.names,
        "nproc_per_node": nproc,
        "world_size": nproc * len(where.hosts),
        "device": config.train.device,
        "rendezvous": where.names[0],
    }


def train(config: Config, registry: Registry, run: Run, where: Target) -> None:
    """Run the training play for `run` and record its model and metrics; raises when any node failed."""
    from mlci.deploy.rollout import run_playbook
    from mlci.deploy.wheelhouse import TRAINING_REQUIREMENTS, build

    folder = config.path(".mlci/fleet") / f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{run.id}"
    job, result = folder / "job", folder / "result"
    result.mkdir(parents=True)
    _job_folder(config, run, job)
    house = build(config.root, config.path(".mlci/wheelhouse"), progress=print, extra=TRAINING_REQUIREMENTS)
    variables = {
        "mlci_train_run": run.id,
        "mlci_train_job": str(job.resolve()),
        "mlci_train_result": str(result.resolve()),
        "mlci_train_nproc": config.train.nproc,
        "mlci_train_wheelhouse": str(house.path),
        "mlci_train_wheelhouse_digest": house.digest,
    }
    code = run_playbook(config, where.inventory, "train.yml", variables, folder.resolve())
    if code != 0:
        raise FleetTrainingFailed(
            f"training {run.id} on {where.env} ({', '.join(where.names)}) failed: ansible-playbook exited {code}"
        )
    record(config, registry, run, result)


def _job_folder(config: Config, run: Run, job: Path) -> None:
    """What each node trains from: the run's resolved config and the data files, at their project paths."""
    root = config.root.resolve()
    for path in data.data_files(config):
        try:
            relative = path.resolve().relative_to(root)
        except ValueError:
            raise ConfigError(
                f"{config.source}: data file {path} is outside the project ({root}): a fleet run copies the "
                "project's data files to every node by their path in the project"
            ) from None
        (job / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, job / relative)
    spec = {"run": run.id, "seq": run.seq, "params": config.to_dict(), "device": config.train.device}
    (job / JOB_FILE).write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")


def record(config: Config, registry: Registry, run: Run, result: Path) -> None:
    """Check what rank 0 sent back, store the artifact and log the metrics in the registry."""
    missing = [name for name in RESULT_FILES if not (result / name).is_file()]
    if missing:
        raise FleetTrainingFailed(f"training {run.id}: rank 0 sent no {', '.join(missing)} (looked in {result})")
    manifest = json.loads((result / MANIFEST_FILE).read_text(encoding="utf-8"))
    digest = sha256_file(result / WEIGHTS_FILE)
    if manifest.get("run_id") != run.id or manifest.get("weights", {}).get("sha256") != digest:
        raise FleetTrainingFailed(
            f"training {run.id}: the artifact rank 0 sent is not this run's (manifest run {manifest.get('run_id')}, "
            f"weights sha256 {digest[:12]} against {str(manifest.get('weights', {}).get('sha256'))[:12]} listed)"
        )
    metrics = json.loads((result / METRICS_FILE).read_text(encoding="utf-8"))
    for epoch in metrics["epochs"]:
        stats = {"train_loss": epoch["loss"], "train_accuracy": epoch["accuracy"]}
        registry.log_metrics(run.id, stats, step=epoch["epoch"])
    registry.log_metrics(run.id, metrics["final"])
    path = _store(config.path(config.registry.artifacts), result, digest)
    registry.add_artifact(run.id, "model", path, digest, (path / WEIGHTS_FILE).stat().st_size)


def _store(root: Path, result: Path, digest: str) -> Path:
    """The artifact into the content-addressed store, whole or not at all (a staging copy, then a rename)."""
    final = root / digest
    if final.exists():
        return final
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        for name in (WEIGHTS_FILE, MANIFEST_FILE):
            shutil.copyfile(result / name, staging / name)
        return place(staging, final)  # safe when another runner stores the same weights at once
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
