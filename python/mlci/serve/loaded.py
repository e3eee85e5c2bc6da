"""An artifact made servable: verified (sha256 before parsing), loaded without pickle, warmed, smoke-tested.

Only mlci.artifacts and mlci.model are needed, never the training code.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
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
    device: str = "cpu"
    loaded_at: float = field(default_factory=time.time)
    forward_s: float = 0.0  # a full batch's forward pass, measured after the warm-up
    # Set when forward passes must not run on the event-loop thread (a GPU model, or a slow one): the batcher
    # runs them here, one at a time, while the loop keeps answering. Its thread ends when the model is dropped
    # (the executor is garbage-collected) once the batches already handed to it are done.
    executor: ThreadPoolExecutor | None = None

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", "0"))

    @property
    def sha256(self) -> str:
        return str(self.manifest["weights"]["sha256"])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """(rows, n_features) float32 -> (rows, n_classes) float32 logits."""
        with torch.inference_mode():
            if self.device == "cpu":
                return self.module(torch.from_numpy(x)).float().numpy()
            return self.module(torch.from_numpy(x).to(self.device)).float().cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "sha256": self.sha256,
            "artifact": str(self.path),
            "run_id": self.manifest.get("run_id"),
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
            "forward_ms": round(self.forward_s * 1000, 3),
            "forward_on": "worker thread" if self.executor is not None else "event loop",
        }


def load(
    path: Path,
    *,
    warm_rows: tuple[int, ...] = (1, 64),
    jit: bool = True,
    device: str = "cpu",
    factories: Collection[str] | None = None,
    inline_forward_s: float = 0.002,
) -> LoadedModel:
    """Verify + load + smoke-test (+ trace) + warm an artifact directory. Raises ArtifactError with the reason.

    `factories`: the model factories allowed (None: any); another is refused before anything is imported.
    A model whose full-batch forward pass takes longer than `inline_forward_s` (measured here), and any model
    off the CPU, gets a worker thread for its forward passes (`executor`)."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise ArtifactError(f"{path}: not an artifact directory")
    try:
        model = _load(path, warm_rows, jit, device, factories)
        model.forward_s = _forward_seconds(model, max(warm_rows, default=1), inline_forward_s)
    except ArtifactError:
        raise
    except Exception as exc:  # anything else a broken artifact can raise: refuse it, never crash the server
        raise ArtifactError(f"{path}: cannot load ({type(exc).__name__}: {exc})") from None
    if device != "cpu" or model.forward_s > inline_forward_s:
        model.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"forward-v{model.version}")
    return model


def _load(
    path: Path, warm_rows: tuple[int, ...], jit: bool, device: str, factories: Collection[str] | None
) -> LoadedModel:
    module, manifest = load_model(path, device=device, factories=factories)
    try:
        sig = Signature.of(manifest)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ArtifactError(f"{path}: manifest input/output is malformed ({exc!r})") from None
    smoke_test(module, manifest)
    if jit:
        module = _traced(module, sig.n_features, manifest["smoke"]["input"], device)
    model = LoadedModel(path, manifest, module, sig, np.array(sig.classes), device)
    for rows in sorted({1, 2, 3, *warm_rows}):  # first calls allocate and specialize: pay before traffic
        for _ in range(3):
            model.predict(np.zeros((rows, sig.n_features), dtype=np.float32))
    return model


def _forward_seconds(model: LoadedModel, rows: int, inline_forward_s: float) -> float:
    """The fastest of several full-batch passes, wall clock (what the event loop would wait for).

    One slower than `inline_forward_s` is measured again a few times after short pauses: a busy machine can
    hold up every pass of a burst, and a moment of contention at load must not send a fast model's passes
    to a worker thread for as long as it serves."""
    full = np.zeros((rows, model.signature.n_features), dtype=np.float32)
    fastest = float("inf")
    for attempt in range(4):
        if attempt:
            time.sleep(0.1)
        for _ in range(5 if attempt == 0 else 2):
            t0 = time.perf_counter()
            model.predict(full)
            fastest = min(fastest, time.perf_counter() - t0)
        if fastest <= inline_forward_s:
            break
    return fastest


_SIGNATURE_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("model_name", ("model_name",)),
    ("input.name", ("input", "name")),
    ("input.shape", ("input", "shape")),
    ("input.features", ("input", "features")),
    ("output.name", ("output", "name")),
    ("output.shape", ("output", "shape")),
    ("output.classes", ("output", "classes")),
)


def check_same_signature(manifest: dict[str, Any], served: LoadedModel, path: Path) -> None:
    """Raise ArtifactError naming each field where `manifest` differs from the served model's: its model name,
    inputs (name, shape, features) or outputs (name, shape, classes). Clients of the served model would break."""
    differences = []
    for name, keys in _SIGNATURE_FIELDS:
        new, old = _field(manifest, keys), _field(served.manifest, keys)
        if new != old:
            differences.append(f"{name} = {_short(new)} (served: {_short(old)})")
    if differences:
        raise ArtifactError(
            f"{path}: its signature differs from the served model version {served.version}'s: "
            f"{'; '.join(differences)}. Clients of the served model would break; load it with "
            '"signature_change": true if that is intended'
        )


def _field(manifest: dict[str, Any], keys: tuple[str, ...]) -> Any:
    value: Any = manifest
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    if len(text) <= limit:
        return text
    count = f" ({len(value)} items)" if isinstance(value, list | dict | str) else ""
    return f"{text[: limit - 12]}...{text[-8:]}{count}"


def _traced(
    module: torch.nn.Module, n_features: int, smoke_input: list[list[float]], device: str = "cpu"
) -> torch.nn.Module:
    """TorchScript trace + freeze: a small model's forward runs 2-4x faster without Python per layer.

    Kept only when it matches eager mode on the smoke input and on random batches of several sizes;
    otherwise (data-dependent control flow, an op tracing cannot handle) the eager module serves.
    """
    gen = torch.Generator().manual_seed(0)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer warnings are about the cases checked below
            example = torch.zeros(2, n_features, device=device)
            traced = torch.jit.freeze(torch.jit.trace(module, example, check_trace=False).eval())
            checks = [torch.tensor(smoke_input, dtype=torch.float32)]
            checks += [torch.randn(rows, n_features, generator=gen) * 8 for rows in (1, 5, 64)]
            for x in (c.to(device) for c in checks):
                if not torch.allclose(traced(x), module(x), rtol=1e-4, atol=1e-5):
                    return module
    except Exception:
        return module
    return traced
