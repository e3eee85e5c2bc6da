"""Data-parallel training through torchrun: `launch` starts N worker processes; `python -m mlci.ddp` is one.

The parent (`mlci train`) has already checked the data and created the run; the workers read the run's
resolved config from the registry (rank 0 reads it and broadcasts it, so they train exactly what the run
records), check and split the data themselves, and train with DistributedDataParallel: gloo on CPU, NCCL on
cuda. Rank 0 alone logs metrics and writes the artifact; the parent marks the run succeeded or failed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

from mlci.config import Config, config_from_dict
from mlci.errors import MlciError


class TrainingProcessesFailed(MlciError):
    """torchrun exited non-zero (a worker failed; its traceback is on stderr)."""


ENV = "MLCI_DDP_JOB"  # JSON: registry, run, root, source, device. Not argv: torchrun parses options after the module


def command(nproc: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "mlci.ddp",
    ]


def job(config: Config, registry_path: Path, run_id: str, device_kind: str) -> str:
    return json.dumps(
        {
            "registry": str(Path(registry_path).resolve()),
            "run": run_id,
            "root": str(Path(config.root).resolve()),
            "source": config.source,
            "device": device_kind,
        }
    )


def launch(config: Config, registry_path: Path, run_id: str, nproc: int, device_kind: str) -> None:
    """Run the N workers to completion. Raises TrainingProcessesFailed when torchrun exits non-zero."""
    env = dict(os.environ)
    env[ENV] = job(config, registry_path, run_id, device_kind)
    # torchrun would set 1 thread per worker and warn about it; share the cores out instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    done = subprocess.run(command(nproc), env=env, check=False)
    if done.returncode != 0:
        raise TrainingProcessesFailed(f"data-parallel training ({nproc} processes) exited with {done.returncode}")


def worker() -> int:
    """One training process under torchrun (RANK, LOCAL_RANK, WORLD_SIZE and the job come from the environment)."""
    spec = json.loads(os.environ[ENV])
    registry_path, run_id, root, source = Path(spec["registry"]), spec["run"], Path(spec["root"]), spec["source"]

    import torch.distributed as dist

    from mlci import data, device, train
    from mlci.progress import epoch_bar
    from mlci.registry import Registry

    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    chosen = device.choose(spec["device"], local_rank=local_rank)
    dist.init_process_group("nccl" if chosen.kind == "cuda" else "gloo")
    registry = Registry(registry_path) if rank == 0 else None
    try:
        params = [registry.run(run_id).params if registry else None]
        dist.broadcast_object_list(params, src=0)
        config = dataclasses.replace(config_from_dict(params[0], source=source), root=root, source=source)
        train_ds, _ = data.load_splits(config)
        run = registry.run(run_id) if registry else None
        description = f"training {run_id} ({world_size} processes, {chosen.kind}, {chosen.precision})"
        with epoch_bar(config.train.epochs, description, enabled=rank == 0 and sys.stdout.isatty()) as bar:

            def on_epoch(stats: train.EpochStats) -> None:
                if registry is not None:
                    train.log_epoch_metrics(registry, run_id, stats)
                    bar(stats)

            fitted = train.fit(config, train_ds, device=chosen, rank=rank, world_size=world_size, on_epoch=on_epoch)
        if registry is not None and run is not None:
            train.record(config, registry, run, train_ds, fitted)
        dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        if registry is not None:
            registry.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(worker())
