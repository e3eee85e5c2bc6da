"""Model artifacts: safetensors weights + a JSON manifest, content-addressed by the weights' sha256.

Layout: <artifacts root>/<sha256>/model.safetensors and manifest.json. The manifest carries what a server
needs to rebuild and check the model without any training code:

    format        1
    model_name    serving name (serving.model_name)
    version       integer, increasing per registry (the run's sequence number)
    run_id        registry run id
    weights       {"file": "model.safetensors", "sha256": ..., "bytes": ...}
    model         {"factory": "module:function", "params": {...}}
    input         {"name": "input", "datatype": "FP32", "shape": [-1, n_features], "features": [...]}
    output        {"name": "output", "datatype": "FP32", "shape": [-1, n_classes], "classes": [...]}
    smoke         {"input": [[...], ...], "expected_logits": [[...], ...], "expected_labels": [...],
                   "atol": 1e-4}
    config        the resolved mlci.toml of the run
    created_at    ISO 8601 UTC

Weights load through safetensors (no pickle). The sha256 is checked before the file is parsed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlci.errors import ArtifactError

WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
FORMAT = 1


@dataclass(frozen=True)
class ArtifactRef:
    path: Path  # the artifact directory
    sha256: str  # of the weights file
    bytes: int


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_artifact(root: Path, state_dict: dict[str, Any], manifest: dict[str, Any]) -> ArtifactRef:
    """Save weights + manifest under root/<sha256>/ atomically (a crash leaves no half artifact).

    The root may be a directory several runners share (an NFS mount): files are written and fsynced under a
    unique temp name, then renamed into place in one step. Two writers of the same weights both succeed; the
    rename that comes second finds the content there and drops its copy (checked by the rename itself, not
    by a look beforehand, which a shared file system's attribute cache can make stale)."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=root))
    try:
        weights = staging / WEIGHTS_FILE
        save_file({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, str(weights))
        digest = sha256_file(weights)
        size = weights.stat().st_size
        full = {"format": FORMAT, **manifest, "weights": {"file": WEIGHTS_FILE, "sha256": digest, "bytes": size}}
        (staging / MANIFEST_FILE).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
        return ArtifactRef(place(staging, root / digest), digest, size)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def place(staging: Path, final: Path) -> Path:
    """Move a complete staging directory (in the same root) to its content-addressed name `final`, durably:
    its files are fsynced first. When `final` is there already (another writer, another runner) the staging
    copy is dropped. Returns `final`."""
    for file in [*staging.iterdir(), staging]:
        _fsync(file)
    try:
        os.rename(staging, final)  # fails when `final` is there already (a non-empty directory)
    except OSError:
        if not (final / MANIFEST_FILE).is_file():
            raise
        shutil.rmtree(staging)  # same weights already stored: content addressing makes this a no-op
    _fsync(final.parent)
    return final


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def package(
    root: Path,
    model: Any,
    *,
    model_name: str,
    version: int,
    run_id: str,
    factory: str,
    params: dict[str, Any],
    features: list[str],
    classes: list[Any],
    smoke_input: list[list[float]],
    config: dict[str, Any],
) -> ArtifactRef:
    """Write a trained model as an artifact, recording its own output on `smoke_input` as the expected one."""
    import datetime

    import torch

    model = model.eval()
    with torch.inference_mode():
        logits = model(torch.tensor(smoke_input, dtype=torch.float32).to(next(model.parameters()).device))
    logits = logits.float().cpu()
    manifest = {
        "model_name": model_name,
        "version": int(version),
        "run_id": run_id,
        "model": {"factory": factory, "params": params},
        "input": {"name": "input", "datatype": "FP32", "shape": [-1, len(features)], "features": list(features)},
        "output": {"name": "output", "datatype": "FP32", "shape": [-1, len(classes)], "classes": list(classes)},
        "smoke": {
            "input": smoke_input,
            "expected_logits": logits.tolist(),
            "expected_labels": logits.argmax(dim=1).tolist(),
            "atol": 1e-4,
        },
        "config": config,
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    return write_artifact(root, model.state_dict(), manifest)


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of an artifact directory (or of the directory holding a manifest.json path)."""
    path = Path(path)
    file = path if path.name == MANIFEST_FILE else path / MANIFEST_FILE
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{file}: no manifest (is {path} an mlci artifact?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{file}: manifest is not valid JSON ({exc})") from None
    for key in ("format", "weights", "model", "input", "output", "smoke"):
        if key not in manifest:
            raise ArtifactError(f"{file}: manifest lacks {key!r}")
    if manifest["format"] != FORMAT:
        raise ArtifactError(f"{file}: format = {manifest['format']!r}: this mlci reads format {FORMAT}")
    return manifest


def verify(path: Path) -> dict[str, Any]:
    """Check the weights' sha256 against the manifest; return the manifest. Raises ArtifactError."""
    path = Path(path)
    manifest = read_manifest(path)
    weights = path / manifest["weights"]["file"]
    if not weights.is_file():
        raise ArtifactError(f"{weights}: weights file missing")
    actual = sha256_file(weights)
    expected = manifest["weights"]["sha256"]
    if actual != expected:
        raise ArtifactError(f"{weights}: sha256 {actual} does not match the manifest's {expected}; refusing to load")
    return manifest


def check_factory(manifest: dict[str, Any], factories: Collection[str], path: Path) -> None:
    """Raise ArtifactError unless the manifest's model factory is one of `factories` (nothing is imported)."""
    factory = manifest["model"].get("factory") if isinstance(manifest["model"], dict) else None
    if factory not in factories:
        allowed = ", ".join(map(repr, factories)) or "none"
        raise ArtifactError(
            f"{path}: model.factory = {factory!r} is not a factory this server allows "
            f"(serving.factories: {allowed}); refusing to import it"
        )


def load_model(
    path: Path, *, device: str = "cpu", factories: Collection[str] | None = None
) -> tuple[Any, dict[str, Any]]:
    """Verify, then rebuild the model from the manifest and load the weights without pickle. eval() mode.

    `factories`: the model factories allowed (None: any); another is refused before anything is imported.
    """
    from safetensors.torch import load_file

    from mlci.model import build_model

    if factories is not None:  # before the weights are even hashed
        check_factory(read_manifest(path), factories, Path(path))
    manifest = verify(path)
    weights = Path(path) / manifest["weights"]["file"]
    n_features = int(manifest["input"]["shape"][-1])
    n_classes = int(manifest["output"]["shape"][-1])
    model = build_model(manifest["model"]["factory"], manifest["model"]["params"], n_features, n_classes)
    try:
        state = load_file(str(weights), device=device)
        model.load_state_dict(state)
    except Exception as exc:  # safetensors/torch raise several types for a bad file
        raise ArtifactError(f"{weights}: cannot load weights ({exc})") from None
    model.to(device).eval()
    return model, manifest


def smoke_test(model: Any, manifest: dict[str, Any]) -> None:
    """Run the manifest's known input; raise ArtifactError unless the output matches what it expects."""
    import torch

    smoke = manifest["smoke"]
    x = torch.tensor(smoke["input"], dtype=torch.float32)
    with torch.inference_mode():
        logits = model(x.to(next(model.parameters()).device)).float().cpu()
    expected = torch.tensor(smoke["expected_logits"], dtype=torch.float32)
    labels = logits.argmax(dim=1).tolist()
    if labels != list(smoke["expected_labels"]) or not torch.allclose(logits, expected, atol=smoke.get("atol", 1e-4)):
        worst = float((logits - expected).abs().max())
        raise ArtifactError(
            f"smoke test failed for model version {manifest.get('version')}: labels {labels} "
            f"(expected {smoke['expected_labels']}), max |logit diff| {worst:.3g}"
        )
