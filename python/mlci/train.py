"""Training: fit the configured model on the training split and record the run in the registry.

One code path serves one process and N data-parallel processes (torchrun/DDP): batches are drawn through a
DistributedSampler (with one replica it is a seeded shuffle), `train.batch_size` is the global batch, and the
epoch's loss/accuracy are summed over all processes. Only rank 0 writes the registry and the artifact.

Determinism: seeds are fixed (device.seed_everything) and the sampler is seeded per epoch, so the same inputs
on the same CPU give the same weights, metrics and artifact sha256.

This module fits and records; it never launches processes (pipeline.py decides between this process and
torchrun through ddp.py; ddp_worker.py is one torchrun rank and calls back in here).
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlci import device as devices
from mlci.config import Config

if TYPE_CHECKING:
    from mlci.artifacts import ArtifactRef
    from mlci.data import Dataset
    from mlci.model import Classifier
    from mlci.registry import Registry, Run
    from mlci.runkey import RunKey


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    epochs: int
    loss: float  # mean cross-entropy over the epoch's samples (all processes)
    accuracy: float  # fraction predicted right while training


@dataclass(frozen=True)
class Fitted:
    model: Classifier  # on CPU, eval mode, fp32 weights
    history: list[EpochStats]
    device: devices.Device


OnEpoch = Callable[[EpochStats], None]


# --- the run's record ----------------------------------------------------------------------------------------


def check_model(config: Config, dataset: Dataset) -> None:
    """Build the model once: a bad model.factory/params is a config error (exit 2) raised before a run exists."""
    from mlci.model import build_model

    build_model(
        config.model.factory, config.model.params, len(dataset.features), len(dataset.classes), source=config.source
    )


def new_run(config: Config, registry: Registry, key: RunKey, env: dict[str, Any]) -> Run:
    """Record a `running` run for `key` in environment `env` (pipeline.train_run holds its lock and finishes it)."""
    return registry.create_run(
        key.key,
        params=config.to_dict(),
        environment=env,
        git_commit=key.git_commit,
        dirty=key.dirty,
        data_hash=key.data_hash,
    )


def fit_and_record(
    config: Config,
    registry: Registry,
    run: Run,
    train_ds: Dataset,
    device: devices.Device,
    *,
    on_epoch: OnEpoch | None = None,
) -> None:
    """Train in this process, logging each epoch's metrics, then record the final metrics and the artifact."""

    def log_epoch(stats: EpochStats) -> None:
        log_epoch_metrics(registry, run.id, stats)
        if on_epoch is not None:
            on_epoch(stats)

    fitted = fit(config, train_ds, device=device, on_epoch=log_epoch)
    record(config, registry, run, train_ds, fitted)


def environment(device: devices.Device, nproc: int) -> dict[str, Any]:
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": device.kind,
        "device_name": device.name,
        "device_why": device.why,
        "gpu_name": device.name if device.kind == "cuda" else None,
        "precision": device.precision,
        "nproc": nproc,
        "platform": platform.platform(),
        "hostname": platform.node(),
    }


def log_epoch_metrics(registry: Registry, run_id: str, stats: EpochStats) -> None:
    registry.log_metrics(run_id, {"train_loss": stats.loss, "train_accuracy": stats.accuracy}, step=stats.epoch)


def record(config: Config, registry: Registry, run: Run, train_ds: Dataset, fitted: Fitted) -> None:
    """Final train metrics (the finished model on the whole training split) and the model artifact."""
    loss, accuracy = score(fitted.model, train_ds)
    registry.log_metrics(run.id, {"train_loss": loss, "train_accuracy": accuracy})
    ref = package_model(config, config.path(config.registry.artifacts), run.id, run.seq, train_ds, fitted.model)
    registry.add_artifact(run.id, "model", ref.path, ref.sha256, ref.bytes)


def package_model(
    config: Config, root: Path, run_id: str, seq: int, train_ds: Dataset, model: Classifier
) -> ArtifactRef:
    """The trained model as an artifact under `root`, its smoke test made of real training rows."""
    from mlci.artifacts import package

    return package(
        root,
        model,
        model_name=config.serving.model_name,
        version=seq,
        run_id=run_id,
        factory=config.model.factory,
        params=config.model.params,
        features=list(train_ds.features),
        classes=list(train_ds.classes),
        smoke_input=smoke_rows(train_ds),
        config=config.to_dict(),
    )


def smoke_rows(ds: Dataset) -> list[list[float]]:
    """One real training row per class present (the first of each), in class order: the smoke-test input."""
    import numpy as np

    first = [int(np.flatnonzero(ds.y == c)[0]) for c in range(len(ds.classes)) if (ds.y == c).any()]
    return ds.x[first].astype(np.float32).tolist()


def score(model: Classifier, ds: Dataset, *, batch_size: int = 65536) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on `ds`, CPU fp32."""
    import torch
    import torch.nn.functional as F

    x, y = torch.from_numpy(ds.x), torch.from_numpy(ds.y)
    loss, right = 0.0, 0
    with torch.inference_mode():
        model.eval()
        for start in range(0, len(y), batch_size):  # batches: the activations of every row at once can be GBs
            logits = model(x[start : start + batch_size]).float()
            yb = y[start : start + batch_size]
            loss += float(F.cross_entropy(logits, yb, reduction="sum"))
            right += int((logits.argmax(1) == yb).sum())
    return loss / max(len(y), 1), right / max(len(y), 1)


# --- fitting -------------------------------------------------------------------------------------------------


def fit(
    config: Config,
    train_ds: Dataset,
    *,
    device: devices.Device | None = None,
    rank: int = 0,
    world_size: int = 1,
    on_epoch: OnEpoch | None = None,
) -> Fitted:
    """Train `config.model` on `train_ds`. With world_size > 1 the default process group must be set up
    (ddp_worker does it); every rank gets the same data and draws its own shard of each epoch."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data.distributed import DistributedSampler

    from mlci.model import build_model

    t = config.train
    device = device or devices.choose(t.device)
    devices.seed_everything(t.seed)
    model = build_model(
        config.model.factory, config.model.params, len(train_ds.features), len(train_ds.classes), source=config.source
    )
    mean, std = standardization(train_ds)
    model.standardize.mean.copy_(mean)
    model.standardize.std.copy_(std)
    model.to(device.torch_device)
    net: torch.nn.Module = model
    if world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.torch_device.index] if device.kind == "cuda" else None
        net = DistributedDataParallel(model, device_ids=ids)
    optimizer = torch.optim.AdamW(net.parameters(), lr=t.lr, weight_decay=t.weight_decay)

    x = torch.from_numpy(train_ds.x).to(device.torch_device)
    y = torch.from_numpy(train_ds.y).to(device.torch_device)
    sampler = DistributedSampler(range(len(y)), num_replicas=world_size, rank=rank, shuffle=True, seed=t.seed)
    per_rank = max(1, -(-t.batch_size // world_size))
    autocast = device.autocast_dtype is not None
    history: list[EpochStats] = []
    for epoch in range(t.epochs):
        sampler.set_epoch(epoch)
        order = torch.tensor(list(sampler), dtype=torch.long, device=device.torch_device)
        # Loss sum and right answers stay on the device until the epoch ends: reading them (or making a tensor
        # from a host number) every step would wait for the GPU each time.
        totals = torch.zeros(2, dtype=torch.float64, device=device.torch_device)
        seen = 0
        net.train()
        for start in range(0, len(order), per_rank):
            rows = order[start : start + per_rank]
            xb, yb = x[rows], y[rows]
            with torch.autocast(device.kind, dtype=device.autocast_dtype, enabled=autocast):
                logits = net(xb)
            loss = F.cross_entropy(logits.float(), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                totals[0] += loss.detach().double() * len(rows)
                totals[1] += (logits.argmax(1) == yb).sum()
            seen += len(rows)
        totals = torch.cat([totals, torch.tensor([float(seen)], dtype=torch.float64, device=device.torch_device)])
        if world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(totals)
        loss_sum, right, seen = totals.tolist()
        stats = EpochStats(epoch + 1, t.epochs, loss_sum / seen, right / seen)
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    model = model.to("cpu").float().eval()
    return Fitted(model, history, device)


def standardization(ds: Dataset) -> tuple[Any, Any]:
    """Per-feature mean and std of the training split; a constant feature gets std 1 (no division by 0)."""
    import numpy as np
    import torch

    # A few columns at a time in float64 (a whole float64 copy would be twice the data). Axis-0 sums run row after
    # row for each column either way, so the figures are those of the whole array, to the bit.
    mean, std = np.empty(ds.x.shape[1]), np.empty(ds.x.shape[1])
    for j in range(0, ds.x.shape[1], 4):
        x = ds.x[:, j : j + 4].astype(np.float64)
        mean[j : j + 4], std[j : j + 4] = x.mean(axis=0), x.std(axis=0)
    std = np.where(std < 1e-8, 1.0, std)
    return torch.from_numpy(mean.astype(np.float32)), torch.from_numpy(std.astype(np.float32))
