"""The one place that decides where training runs and in which precision.

cuda -> bf16 autocast; cpu -> fp32. `device_kind` answers without importing torch (the run key needs it on
the no-op path, where importing torch would cost most of the time budget).
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_NVIDIA_NODES = ("/dev/nvidiactl", "/proc/driver/nvidia/version")


def device_kind(preference: str = "auto") -> str:
    """'cuda' or 'cpu' as training would choose it, decided without importing torch."""
    if preference in ("cpu", "cuda"):
        return preference
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return "cpu"
    return "cuda" if any(Path(p).exists() for p in _NVIDIA_NODES) else "cpu"


def torch_version() -> str:
    """torch's version, read from torch/version.py without importing torch (nor importlib.metadata, whose
    import alone costs more than the rest of the no-op path's run-key computation)."""
    try:
        spec = importlib.util.find_spec("torch")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return "none"
    if spec.origin:
        try:
            text = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
        except OSError:
            text = ""
        found = re.search(r"""^__version__\s*(?::\s*str\s*)?=\s*['"]([^'"]+)['"]""", text, re.M)
        if found:
            return found.group(1)
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "none"


@dataclass(frozen=True)
class Device:
    kind: str  # "cuda" | "cpu"
    torch_device: Any  # torch.device
    autocast_dtype: Any  # torch.bfloat16 on cuda, None on cpu (plain fp32)
    name: str  # GPU name, or the CPU description
    why: str  # why this device: the setting and what the host has, said to the user and kept with the run

    @property
    def precision(self) -> str:
        return "bf16" if self.autocast_dtype is not None else "fp32"


def choose(preference: str = "auto", *, local_rank: int = 0, precision: str = "auto") -> Device:
    """Resolve the training device. `precision` 'fp32' turns bf16 autocast off on cuda (for comparisons).

    `auto` uses the CPU only on a host without an NVIDIA GPU (or with every GPU hidden) and says so; on a host
    with one whose CUDA does not work it raises ConfigError saying what failed: never a silent CPU fallback.
    """
    import torch

    from mlci.errors import ConfigError

    def cpu(why: str) -> Device:
        return Device("cpu", torch.device("cpu"), None, _cpu_name(), why)

    if preference == "cpu":
        return cpu("train.device = cpu")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", None)
    if preference == "auto" and visible in ("", "-1"):
        return cpu(f"train.device = auto, and CUDA_VISIBLE_DEVICES={visible!r} hides every GPU")
    gpu_node = next((p for p in _NVIDIA_NODES if Path(p).exists()), None)
    if not torch.cuda.is_available():
        if preference == "auto" and gpu_node is None:
            return cpu(f"train.device = auto, and this host has no NVIDIA GPU (no {_NVIDIA_NODES[0]})")
        host = f"this host has an NVIDIA GPU ({gpu_node})" if gpu_node else "no NVIDIA GPU is visible here"
        raise ConfigError(
            "<config>", "train.device", preference,
            f"{host} but CUDA does not work: {_cuda_failure(torch)}; fix the driver or torch, or set "
            'train.device = "cpu" to train on the CPU',
        )  # fmt: skip
    torch.cuda.set_device(local_rank)
    dtype = None if precision == "fp32" else torch.bfloat16
    name = torch.cuda.get_device_name(local_rank)
    why = f"train.device = {preference}, CUDA {torch.version.cuda} works on {name}"
    return Device("cuda", torch.device("cuda", local_rank), dtype, name, why)


def _cuda_failure(torch: Any) -> str:
    """What stops CUDA in this torch, in the words of torch itself where it has some."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build"
    try:
        torch.cuda.init()
    except Exception as exc:  # torch raises RuntimeError/AssertionError with the driver's own message
        return f"torch {torch.__version__} (CUDA {torch.version.cuda}): {exc}"
    return f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable device"


def seed_everything(seed: int) -> None:
    """Fix every RNG training touches, and ask torch for deterministic kernels."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"
