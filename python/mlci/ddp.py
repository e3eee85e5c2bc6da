"""Data-parallel training through torchrun: `launch` starts N worker processes; `python -m mlci.ddp` is one.

The parent (`mlci train`) has already checked the data and created the run; the workers read the run's
resolved config from the registry (rank 0 reads it and broadcasts it, so they train exactly what the run
records), check and split the data themselves, and train with DistributedDataParallel: gloo on CPU, NCCL on
cuda. Rank 0 alone logs metrics and writes the artifact; the parent marks the run succeeded or failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from mlci.config import Config, config_from_dict
from mlci.errors import MlciError


class TrainingProcessesFailed(MlciError):
    """torchrun exited non-zero (a worker failed; its traceback is on stderr)."""


def command(config: Config, registry_path: Path, run_id: str, nproc: int, device_kind: str) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "-m", "mlci.ddp",
        "--registry", str(Path(registry_path).resolve()), "--run", run_id,
        "--root", str(Path(config.root).resolve()), "--source", config.source, "--device", device_kind,
    ]  # fmt: skip


def launch(config: Config, registry_path: Path, run_id: str, nproc: int, device_kind: str) -> None:
    """Run the N workers to completion. Raises TrainingProcessesFailed when torchrun exits non-zero."""
    env = dict(os.environ)
    # torchrun would set 1 thread per worker and warn about it; share the cores out instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    done = subprocess.run(command(config, registry_path, run_id, nproc, device_kind), env=env, check=False)
    if done.returncode != 0:
        raise TrainingProcessesFailed(f"data-parallel training ({nproc} processes) exited with {done.returncode}")


def worker(argv: list[str] | None = None) -> int:
    """One training process under torchrun (RANK, LOCAL_RANK, WORLD_SIZE come from its environment)."""
    p = argparse.ArgumentParser(prog="python -m mlci.ddp")
    p.add_argument("--registry", required=True, type=Path)
    p.add_argument("--run", required=True)
    p.add_argument("--root", required=True, type=Path)
    p.add_argument("--source", default="mlci.toml")
    p.add_argument("--device", choices=("cpu", "cuda"), required=True, help="resolved by the parent")
    args = p.parse_args(argv)

    import torch.distributed as dist

    from mlci import data, device, train
    from mlci.progress import epoch_bar
    from mlci.registry import Registry

    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    chosen = device.choose(args.device, local_rank=local_rank)
    dist.init_process_group("nccl" if chosen.kind == "cuda" else "gloo")
    registry = Registry(args.registry) if rank == 0 else None
    try:
        params = [registry.run(args.run).params if registry else None]
        dist.broadcast_object_list(params, src=0)
        config = dataclasses.replace(
            config_from_dict(params[0], source=args.source), root=args.root, source=args.source
        )
        train_ds, _ = data.split(data.check(config), config.data.eval_fraction, config.data.split_seed)
        run = registry.run(args.run) if registry else None
        description = f"training {args.run} ({world_size} processes, {chosen.kind}, {chosen.precision})"
        with epoch_bar(config.train.epochs, description, enabled=rank == 0 and sys.stdout.isatty()) as bar:

            def on_epoch(stats: train.EpochStats) -> None:
                if registry is not None:
                    train.log_epoch_metrics(registry, args.run, stats)
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
