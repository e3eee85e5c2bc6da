"""One torchrun rank: `python -m mlci.ddp_worker`, started by ddp.launch (RANK, LOCAL_RANK, WORLD_SIZE and
the job come from the environment).

Rank 0 reads the run's resolved config from the registry and broadcasts it, so every rank trains exactly
what the run records; each rank checks and splits the data itself. Rank 0 alone logs metrics and writes the
artifact; the parent (`mlci train`) marks the run succeeded or failed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

from mlci.config import config_from_dict
from mlci.ddp import ENV


def worker() -> int:
    spec = json.loads(os.environ[ENV])
    registry_path, run_id, root, source = spec["registry"], spec["run"], Path(spec["root"]), spec["source"]

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
