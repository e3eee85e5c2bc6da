"""Training on the GPU in bf16 autocast (what `train.device = "cuda"` does) against fp32 on the same GPU, with the
CPU fp32 run as the baseline, all in the same invocation.

Each configuration trains the example project (digits, mlci.toml) through mlci.train.fit from the same seed and
is scored on the frozen evaluation split, so the figures show both the time and whether bf16 costs accuracy.
`--hidden` widens the MLP (e.g. 4096,4096) to see where bf16 pays off; the bundled model is small enough that
kernel launches, not arithmetic, set its GPU time. Without a GPU only the CPU baseline runs.
Usage: python3 bench/bench_train_precision.py [--epochs N] [--hidden W,W] [--batch-size B] [--repeats R] [--no-cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from mlci import data, device, train
from mlci.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def run(label: str, overrides: list[str], chosen: device.Device, repeats: int) -> float:
    """Train `repeats` times after a warm-up; print the median time of an epoch (the loop alone: model building
    and copies to and from the GPU are left out) and the whole fit's; return the epoch time."""
    config = load_config(ROOT / "mlci.toml", overrides)
    train_ds, eval_ds = data.split(data.check(config), config.data.eval_fraction, config.data.split_seed)
    epoch_seconds, fit_seconds = [], []
    for attempt in range(repeats + 1):  # the first run warms CUDA's context and kernels up, and is not counted
        stamps: list[float] = []  # each epoch ends with its totals read back, so the GPU is done by then
        start = time.perf_counter()
        fitted = train.fit(config, train_ds, device=chosen, on_epoch=lambda _, s=stamps: s.append(time.perf_counter()))
        if attempt:
            fit_seconds.append(time.perf_counter() - start)
            epoch_seconds.append((stamps[-1] - stamps[0]) / max(1, len(stamps) - 1))
    epoch = statistics.median(epoch_seconds)
    loss, accuracy = train.score(fitted.model, eval_ds)
    print(
        f"  {label:<10} {epoch * 1000:9.1f} ms/epoch   {len(train_ds) / epoch:10.0f} samples/s   "
        f"fit {statistics.median(fit_seconds):6.2f} s   eval accuracy {accuracy:.4f}   eval loss {loss:.4f}"
        f"   ({chosen.name})"
    )
    return epoch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--hidden", default="", help="comma-separated layer widths (default: mlci.toml's)")
    ap.add_argument("--batch-size", type=int, default=0, help="global batch (default: mlci.toml's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU run (too slow for a wide model)")
    args = ap.parse_args()
    overrides = [f"train.epochs={args.epochs}"]
    if args.hidden:
        overrides.append(f"model.params.hidden=[{args.hidden}]")
    if args.batch_size:
        overrides.append(f"train.batch_size={args.batch_size}")
    print(f"digits, {' '.join(overrides)}, median of {args.repeats} after one warm-up run")
    cpu = None if args.no_cpu else run("cpu fp32", [*overrides, "train.device=cpu"], device.choose("cpu"), args.repeats)
    if not torch.cuda.is_available():
        print("  no CUDA device here: nothing to compare on a GPU")
        return
    fp32 = run("cuda fp32", [*overrides, "train.device=cuda"], device.choose("cuda", precision="fp32"), args.repeats)
    bf16 = run("cuda bf16", [*overrides, "train.device=cuda"], device.choose("cuda"), args.repeats)
    against_cpu = f"ratio cuda fp32 / cpu fp32: {fp32 / cpu:.2f}   " if cpu else ""
    print(f"  {against_cpu}ratio cuda bf16 / cuda fp32: {bf16 / fp32:.2f}")


if __name__ == "__main__":
    main()
