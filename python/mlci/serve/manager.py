"""Which model serves: the current one, and the previous one kept loaded for instant rollback.

A swap loads version N+1 beside N in a worker thread (verify sha256, load, warm, smoke test) while N keeps
serving, then flips with one assignment on the event-loop thread (atomic for every request). A failed load
or smoke test raises ArtifactError and changes nothing. Only two models stay loaded: the one before the
previous is dropped at a flip.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from mlci.artifacts import read_manifest
from mlci.errors import ArtifactError
from mlci.serve import loaded
from mlci.serve.loaded import LoadedModel
from mlci.serve.metrics import Metrics

log = logging.getLogger("mlci.serve")


class SwapBusy(Exception):
    """A load is already in progress."""


class ModelManager:
    def __init__(
        self,
        name: str,
        metrics: Metrics,
        *,
        warm_rows: tuple[int, ...] = (1, 64),
        jit: bool = True,
        device: str = "cpu",
        factories: tuple[str, ...] | None = None,
        inline_forward_s: float = 0.002,
    ) -> None:
        self.name = name
        self.metrics = metrics
        self.warm_rows = warm_rows
        self.jit = jit
        self.device = device
        self.factories = factories  # the model factories a manifest may name (None: any)
        self.inline_forward_s = inline_forward_s  # slower forward passes run in a worker thread
        self.current: LoadedModel | None = None
        self.previous: LoadedModel | None = None
        self.loading: str | None = None  # artifact path being loaded
        self.last_error: str | None = None
        self.server_version = ""  # what the deploy installed and started (its upgrade check reads it back)

    def get(self, version: str | None = None) -> LoadedModel | None:
        """The current model, or the loaded one with this version (current or previous)."""
        if version is None:
            return self.current
        for model in (self.current, self.previous):
            if model is not None and model.version == version:
                return model
        return None

    def versions(self) -> list[str]:
        return [m.version for m in (self.current, self.previous) if m is not None]

    async def load(self, path: Path, *, sha256: str | None = None, signature_change: bool = False) -> dict[str, Any]:
        """Load, warm and smoke-test `path` beside the current model, then make it current.

        Refused (ArtifactError) when the artifact's model name, inputs or outputs differ from the current
        model's, unless `signature_change` says that is intended; and when its model factory is not allowed."""
        model = await self.prepare(path, sha256=sha256, signature_change=signature_change)
        return self.commit(model)

    async def prepare(
        self, path: Path, *, sha256: str | None = None, signature_change: bool = False
    ) -> LoadedModel | None:
        """The first half of `load`: the checked, warmed model, not serving yet (None: already serving these
        weights). Worker processes prepare in all, then commit in all, so a refusal in one changes none."""
        if self.loading is not None:
            raise SwapBusy(f"already loading {self.loading}")
        self.loading = str(path)
        served = self.current
        try:
            model = await asyncio.to_thread(self._load, Path(path), served, signature_change)
            if sha256 is not None and model.sha256 != sha256:
                raise ArtifactError(f"{path}: weights sha256 {model.sha256} is not the expected {sha256}")
            same = self.get(model.version)
            if same is not None and same.sha256 != model.sha256:
                raise ArtifactError(
                    f"{path}: version {model.version} is already loaded with other weights ({same.sha256[:12]}); "
                    "give the new artifact a new version"
                )
        except ArtifactError as exc:
            self.last_error = str(exc)
            self.metrics.swaps.labels(action="load", outcome="refused").inc()
            if self.current is not None:  # a refused first load is the command's error, printed once
                log.warning("refused %s: %s", path, exc)
            raise
        finally:
            self.loading = None
        if self.current is not None and self.current.sha256 == model.sha256:
            return None  # already serving these weights
        return model

    def commit(self, model: LoadedModel | None) -> dict[str, Any]:
        """Serve a prepared model (None: nothing to change)."""
        if model is None:
            return self.status()
        self.current, self.previous = model, self.current  # the flip: one assignment on the loop thread
        self.last_error = None
        self.metrics.model_version.set(_numeric(model.version))
        self.metrics.swaps.labels(action="load", outcome="ok").inc()
        previous = self.previous.version if self.previous else "none"
        log.info("serving %s version %s from %s (previous: %s)", self.name, model.version, model.path, previous)
        return self.status()

    def _load(self, path: Path, served: LoadedModel | None, signature_change: bool) -> LoadedModel:
        if served is not None and not signature_change and path.is_dir():
            loaded.check_same_signature(read_manifest(path), served, path)  # before anything loads
        return loaded.load(
            path,
            warm_rows=self.warm_rows,
            jit=self.jit,
            device=self.device,
            factories=self.factories,
            inline_forward_s=self.inline_forward_s,
        )

    def rollback(self) -> dict[str, Any]:
        """Serve the previous model again (the current one becomes previous, so rollback toggles)."""
        if self.previous is None:
            raise ArtifactError("no previous model is loaded; nothing to roll back to")
        self.current, self.previous = self.previous, self.current
        self.metrics.model_version.set(_numeric(self.current.version))
        self.metrics.swaps.labels(action="rollback", outcome="ok").inc()
        log.info("rolled back: serving %s version %s", self.name, self.current.version)
        return self.status()

    def status(self) -> dict[str, Any]:
        return {
            "model_name": self.name,
            "current": self.current.describe() if self.current else None,
            "previous": self.previous.describe() if self.previous else None,
            "loading": self.loading,
            "last_error": self.last_error,
            "server_version": self.server_version,
        }


def _numeric(version: str) -> float:
    try:
        return float(version)
    except ValueError:
        return -1.0
