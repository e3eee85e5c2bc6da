"""An artifact made servable: verified (sha256 before parsing), loaded without pickle, warmed, smoke-tested.

Only mlci.artifacts and mlci.model are needed, never the training code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlci.artifacts import load_model, smoke_test
from mlci.errors import ArtifactError
from mlci.serve.protocol import Signature


@dataclass(eq=False)
class LoadedModel:
    path: Path
    manifest: dict[str, Any]
    module: torch.nn.Module
    signature: Signature
    classes: np.ndarray
    loaded_at: float = field(default_factory=time.time)

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", "0"))

    @property
    def sha256(self) -> str:
        return str(self.manifest["weights"]["sha256"])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(rows, n_features) float32 -> (rows, n_classes) float32 logits."""
        with torch.inference_mode():
            return self.module(torch.from_numpy(x)).float().numpy()

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sha256": self.sha256,
            "artifact": str(self.path),
            "run_id": self.manifest.get("run_id"),
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
        }


def load(path: Path, *, warm_rows: tuple[int, ...] = (1, 64)) -> LoadedModel:
    """Verify + load + warm + smoke-test an artifact directory. Raises ArtifactError with the reason."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise ArtifactError(f"{path}: not an artifact directory")
    module, manifest = load_model(path)
    try:
        sig = Signature.of(manifest)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ArtifactError(f"{path}: manifest input/output is malformed ({exc!r})") from None
    model = LoadedModel(path, manifest, module, sig, np.array(sig.classes))
    for rows in warm_rows:  # first calls allocate; pay for that before taking traffic
        model.predict(np.zeros((rows, sig.n_features), dtype=np.float32))
    smoke_test(module, manifest)
    return model
