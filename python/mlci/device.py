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

    @property
    def precision(self) -> str:
        return "bf16" if self.autocast_dtype is not None else "fp32"


def choose(preference: str = "auto", *, local_rank: int = 0, precision: str = "auto") -> Device:
    """Resolve the training device. `precision` 'fp32' turns bf16 autocast off on cuda (for comparisons)."""
    import torch

    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            from mlci.errors import ConfigError

            raise ConfigError("<config>", "train.device", "cuda", "no CUDA device is available here")
        torch.cuda.set_device(local_rank)
        dtype = None if precision == "fp32" else torch.bfloat16
        return Device("cuda", torch.device("cuda", local_rank), dtype, torch.cuda.get_device_name(local_rank))
    return Device("cpu", torch.device("cpu"), None, _cpu_name())


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
