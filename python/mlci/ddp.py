"""Data-parallel training through torchrun: `launch` starts N worker processes (`python -m mlci.ddp_worker`).

The parent (`mlci train`, through pipeline.py) has already checked the data and created the run; the workers
read the run's resolved config from the registry, check and split the data themselves, and train with
DistributedDataParallel: gloo on CPU, NCCL on cuda. Rank 0 alone logs metrics and writes the artifact; the
parent marks the run succeeded or failed. This module imports no training code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mlci.config import Config
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
        "mlci.ddp_worker",
    ]


def job(config: Config, registry_path: str | Path, run_id: str, device_kind: str) -> str:
    return json.dumps(
        {
            # A PostgreSQL URL stays as it is; a SQLite file is made absolute for the workers.
            "registry": registry_path if isinstance(registry_path, str) else str(Path(registry_path).resolve()),
            "run": run_id,
            "root": str(Path(config.root).resolve()),
            "source": config.source,
            "device": device_kind,
        }
    )


def launch(config: Config, registry_path: str | Path, run_id: str, nproc: int, device_kind: str) -> None:
    """Run the N workers to completion. Raises TrainingProcessesFailed when torchrun exits non-zero."""
    env = dict(os.environ)
    env[ENV] = job(config, registry_path, run_id, device_kind)
    # torchrun would set 1 thread per worker and warn about it; share the cores out instead.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    proc = subprocess.Popen(command(nproc), env=env)
    try:
        code = proc.wait()
    except BaseException:  # interrupted (SIGTERM, SIGINT): torchrun stops its workers on SIGTERM
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    if code != 0:
        raise TrainingProcessesFailed(f"data-parallel training ({nproc} processes) exited with {code}")
