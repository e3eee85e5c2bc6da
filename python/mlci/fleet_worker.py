"""One training process of a fleet run, under torchrun on a runner (`python -m mlci.fleet_worker`).

The job folder (MLCI_FLEET_JOB: its job.json; mlci.fleet_train made it) holds the run's resolved config and the
data at their project paths. Every rank checks and splits the data itself and trains with DistributedDataParallel
(gloo on CPU, NCCL on cuda); rank 0 then writes the artifact and the metrics into MLCI_FLEET_RESULT for the
controller to fetch. No registry here: the controller records the run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlci.artifacts import MANIFEST_FILE, WEIGHTS_FILE
from mlci.config import config_from_dict
from mlci.fleet_train import METRICS_FILE

if TYPE_CHECKING:
    from mlci.config import Config
    from mlci.data import Dataset
    from mlci.train import Fitted


def main() -> int:
    job_file, result = Path(os.environ["MLCI_FLEET_JOB"]), Path(os.environ["MLCI_FLEET_RESULT"])
    job = json.loads(job_file.read_text(encoding="utf-8"))
    root = job_file.parent
    source = str(root / "mlci.toml")

    import torch.distributed as dist

    from mlci import data, device, train

    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    chosen = device.choose(job["device"], local_rank=local_rank)
    dist.init_process_group("nccl" if chosen.kind == "cuda" else "gloo")
    try:
        config = dataclasses.replace(config_from_dict(job["params"], source=source), root=root, source=source)
        train_ds, _ = data.load_splits(config)
        print(f"{socket.gethostname()}: rank {rank} of {world_size} on {chosen.kind} ({chosen.why})", flush=True)
        fitted = train.fit(config, train_ds, device=chosen, rank=rank, world_size=world_size)
        if rank == 0:
            _write_result(config, job, train_ds, fitted, result, world_size)
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _write_result(
    config: Config, job: dict[str, Any], train_ds: Dataset, fitted: Fitted, result: Path, world_size: int
) -> None:
    from mlci import train

    result.mkdir(parents=True, exist_ok=True)
    staging = result / ".artifacts"
    ref = train.package_model(config, staging, job["run"], job["seq"], train_ds, fitted.model)
    for name in (WEIGHTS_FILE, MANIFEST_FILE):
        shutil.copyfile(ref.path / name, result / name)
    shutil.rmtree(staging)
    loss, accuracy = train.score(fitted.model, train_ds)
    metrics = {
        "epochs": [{"epoch": s.epoch, "loss": s.loss, "accuracy": s.accuracy} for s in fitted.history],
        "final": {"train_loss": loss, "train_accuracy": accuracy},
        "environment": {**train.environment(fitted.device, world_size), "world_size": world_size},
    }
    # Last, and whole: the controller takes the metrics file as the sign that the rest is there.
    partial = result / f".{METRICS_FILE}.partial"
    partial.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    partial.replace(result / METRICS_FILE)


if __name__ == "__main__":
    raise SystemExit(main())
