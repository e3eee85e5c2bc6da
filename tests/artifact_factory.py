"""Real model artifacts for tests: untrained digits-shaped MLPs packaged by mlci itself, and broken copies."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FEATURES = [f"px_{r}_{c}" for r in range(8) for c in range(8)]


def build_artifact(
    root: Path,
    *,
    version: int = 1,
    seed: int = 0,
    hidden: Sequence[int] = (128, 128),
    model_name: str = "digits",
    features: Sequence[str] = FEATURES,
    classes: Sequence[object] = tuple(range(10)),
    factory: str = "mlci.model:mlp",
    params: dict[str, Any] | None = None,
):
    """Package a seeded, untrained MLP (or `factory`'s model with `params`) under `root`; returns the ArtifactRef."""
    import torch

    from mlci.artifacts import package
    from mlci.model import build_model

    torch.manual_seed(seed)
    params = {"hidden": list(hidden)} if params is None else params
    model = build_model(factory, params, len(features), len(classes))
    gen = torch.Generator().manual_seed(seed)
    smoke = torch.randint(0, 17, (4, len(features)), generator=gen).float().tolist()
    return package(
        root,
        model,
        model_name=model_name,
        version=version,
        run_id=f"test-{version}-{seed}",
        factory=factory,
        params=params,
        features=list(features),
        classes=list(classes),
        smoke_input=smoke,
        config={},
    )


def with_factory(artifact: Path, dest: Path, factory: str) -> Path:
    """A copy of `artifact` whose manifest names another model factory (the weights, and their sha256, stay)."""
    copy = shutil.copytree(artifact, dest)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"]["factory"] = factory
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def foreign_factory_module(folder: Path, name: str = "foreign_factory") -> Path:
    """A module `name` in `folder` with an `mlp` factory; importing it creates folder/`name`.imported."""
    folder.mkdir(parents=True, exist_ok=True)
    mark = folder / f"{name}.imported"
    (folder / f"{name}.py").write_text(
        f"import pathlib\n\npathlib.Path({str(mark)!r}).touch()\n\nfrom mlci.model import mlp  # noqa: E402, F401\n"
    )
    return mark


def corrupt_one_byte(artifact: Path, dest: Path) -> Path:
    """A copy of `artifact` whose weights differ by one bit (the manifest's sha256 no longer matches)."""
    copy = shutil.copytree(artifact, dest)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    return copy


def break_smoke_test(artifact: Path, dest: Path) -> Path:
    """A copy of `artifact` whose manifest expects other outputs than the weights give."""
    copy = shutil.copytree(artifact, dest)
    manifest = json.loads((copy / "manifest.json").read_text())
    smoke = manifest["smoke"]
    smoke["expected_labels"] = [(label + 1) % 10 for label in smoke["expected_labels"]]
    smoke["expected_logits"] = [[v + 1.0 for v in row] for row in smoke["expected_logits"]]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy
