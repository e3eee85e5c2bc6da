"""Helpers for the serving tests (no tests here): real artifacts; `mlci serve` processes from serve_process.py."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from artifact_factory import build_artifact
from serve_process import CONFIG, ROOT, Server, serving, start  # noqa: F401  (the serving tests import them here)

N_FEATURES = 64


def make_artifact(root: Path, *, version: int = 1, seed: int = 0, hidden: Sequence[int] = (32, 32)) -> Path:
    """A real artifact of an untrained digits-shaped MLP (like tests/conftest.py's fixture, any scope)."""
    return build_artifact(root, version=version, seed=seed, hidden=hidden).path


def infer_body(rows: int = 1, *, value: float = 3.0, **extra: Any) -> dict[str, Any]:
    data = [value] * (rows * N_FEATURES)
    return {"inputs": [{"name": "input", "shape": [rows, N_FEATURES], "datatype": "FP32", "data": data}], **extra}
