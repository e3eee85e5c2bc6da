"""The run key: one sha256 over everything a trained model depends on (code, data, params, environment).

Same key -> `mlci train` reuses the stored run instead of training again. This module sits on the no-op
path, so it imports only the standard library: never torch, numpy or rich.

- code: the project's git checkout — the commit's tree id, the uncommitted diff (`git diff HEAD --binary`)
  and the content of untracked files git does not ignore (except mlci's own outputs: registry, artifacts,
  reports, the .mlci/ folder) — plus mlci's own sources when mlci is installed
  outside that checkout. Outside a git checkout (or without git) the sources of mlci and of the model
  factory's module are hashed instead.
- data: the sha256 of every data file and of the schema, each read again only when its stat changed
  (filehash.py keeps the cache; `data.rehash = true` or `mlci train --rehash` reads them all).
- params: the resolved config as canonical JSON, less `data.rehash` (how the data is hashed, not what) and
  `[periodic]` (what cron does after training).
- environment: torch's version and the device kind, both read without importing torch.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import util as importlib_util
from pathlib import Path
from typing import Any

import mlci
from mlci.config import Config
from mlci.device import device_kind, torch_version
from mlci.filehash import Digests, cache_path, compute_digests

_CHUNK = 1 << 20


@dataclass(frozen=True)
class CodeState:
    digest: str
    git_commit: str | None  # None outside a git checkout
    dirty: bool  # uncommitted changes or untracked files


@dataclass(frozen=True)
class RunKey:
    key: str
    code: CodeState
    data_hash: str
    params_hash: str
    torch: str
    device: str
    # The data files' hashes, for the stat cache: `save_data_hashes()` once the data is known good.
    data_digests: Digests | None = field(default=None, compare=False, repr=False)

    def save_data_hashes(self) -> None:
        if self.data_digests is not None:
            self.data_digests.save()

    @property
    def git_commit(self) -> str | None:
        return self.code.git_commit

    @property
    def dirty(self) -> bool:
        return self.code.dirty


def compute(config: Config, data_files: Iterable[Path]) -> RunKey:
    """The run key of training `config` on `data_files` (the data files and the schema) here, now."""
    code = code_state(config)
    data_hash, digests = hash_data(config, list(data_files))
    params = config.to_dict()
    del params["data"]["rehash"]  # how the files are hashed, not what the model is trained on
    del params["registry"]["url"]  # where runs are recorded, not what is trained
    del params["periodic"]  # what cron does after training, not what is trained
    params_hash = _sha256(canonical_json(params).encode())
    torch, device = torch_version(), device_kind(config.train.device)
    parts = {"code": code.digest, "data": data_hash, "params": params_hash, "torch": torch, "device": device}
    key = _sha256(canonical_json(parts).encode())
    return RunKey(key, code, data_hash, params_hash, torch, device, digests)


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def hash_data(config: Config, paths: list[Path]) -> tuple[str, Digests]:
    """sha256 over (name, sha256 of the content) of each file, in order; a missing one hashes as 'missing' (the
    data check reports it properly later). Files are read only when their stat changed (filehash.py); the
    returned Digests update that cache when saved."""
    digests = compute_digests(paths, cache_path(config), rehash=config.data.rehash)
    h = hashlib.sha256()
    for path, digest in zip(paths, digests.values, strict=True):
        h.update(str(path).encode() + b"\0")
        h.update(digest.encode() if digest is not None else b"\0missing")
        h.update(b"\0")
    return h.hexdigest(), digests


def hash_files(paths: Iterable[Path], *, names_relative_to: Path | None = None, missing_ok: bool = False) -> str:
    """sha256 over (name, content) of each file, in the given order. A missing file hashes as 'missing'
    with `missing_ok` (the data check reports it properly later), else raises FileNotFoundError."""
    h = hashlib.sha256()
    for path in paths:
        name = str(path.relative_to(names_relative_to)) if names_relative_to else str(path)
        h.update(name.encode() + b"\0")
        try:
            with open(path, "rb") as f:
                while block := f.read(_CHUNK):
                    h.update(block)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            if not missing_ok:
                raise
            h.update(b"\0missing")
        h.update(b"\0")
    return h.hexdigest()


def code_state(config: Config) -> CodeState:
    root = Path(config.root).resolve()
    git = _git_state(root)
    mlci_dir = Path(mlci.__file__).resolve().parent
    if git is None:
        sources = [*_python_sources(mlci_dir), *_factory_sources(config.model.factory, mlci_dir)]
        return CodeState(_sha256(("files:" + hash_files(sources)).encode()), None, False)
    toplevel, commit, tree, diff, untracked = git
    outputs = _outputs(config)
    untracked = [p for p in untracked if not _is_output(p.resolve(), outputs)]
    h = hashlib.sha256()
    h.update(f"git:{tree}\0".encode())
    h.update(diff + b"\0")
    h.update(hash_files(untracked, names_relative_to=toplevel, missing_ok=True).encode())
    if not mlci_dir.is_relative_to(toplevel):  # mlci installed elsewhere: its code counts too
        h.update(("mlci:" + hash_files(_python_sources(mlci_dir))).encode())
    return CodeState(h.hexdigest(), commit, bool(diff or untracked))


def _outputs(config: Config) -> tuple[Path, tuple[Path, ...]]:
    """What mlci itself writes (registry, artifacts, reports): never code, even where .gitignore forgets it."""
    r = config.registry
    folders = (r.artifacts, r.reports, config.loadtest.output, ".mlci")
    return config.path(r.path).resolve(), tuple(config.path(p).resolve() for p in folders)


def _is_output(path: Path, outputs: tuple[Path, tuple[Path, ...]]) -> bool:
    registry, folders = outputs
    # The registry's sidecars (-wal, -shm, .lock) start with its file name.
    sidecar = path.parent == registry.parent and path.name.startswith(registry.name)
    return sidecar or any(path.is_relative_to(f) for f in folders)


def _git_state(root: Path) -> tuple[Path, str | None, str, bytes, list[Path]] | None:
    """(toplevel, commit, tree id, diff, untracked files) of the checkout holding `root`, or None."""
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is None:
        return None
    toplevel = Path(top.decode().strip())
    head = _git(toplevel, "rev-parse", "-q", "HEAD", "HEAD^{tree}")
    untracked_out = _git(toplevel, "ls-files", "-z", "--others", "--exclude-standard")
    untracked = sorted(toplevel / p for p in (untracked_out or b"").decode().split("\0") if p)
    if head is None:  # no commit yet: every tracked file counts by content
        tracked = _git(toplevel, "ls-files", "-z", "--cached") or b""
        files = sorted(toplevel / p for p in tracked.decode().split("\0") if p)
        content = hash_files(files, names_relative_to=toplevel, missing_ok=True).encode()
        return toplevel, None, "none", content, untracked
    commit, tree = head.decode().split()
    diff = _git(toplevel, "diff", "HEAD", "--binary", "--no-color", "--no-ext-diff") or b""
    return toplevel, commit, tree, diff, untracked


def _git(cwd: Path, *args: str) -> bytes | None:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    return done.stdout if done.returncode == 0 else None


def _python_sources(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*.py") if "__pycache__" not in p.parts)


def _factory_sources(factory: str, mlci_dir: Path) -> list[Path]:
    """The model factory's module file when it lives outside mlci, found without importing anything (a
    package's __init__ could import torch)."""
    top, *rest = factory.partition(":")[0].split(".")
    try:
        spec = importlib_util.find_spec(top)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if not rest:
        found = Path(spec.origin) if spec.origin else None
    else:
        base = Path(next(iter(spec.submodule_search_locations or []), "/nonexistent")).joinpath(*rest)
        found = next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)
    if found is None or found.suffix != ".py" or not found.is_file():
        return []
    found = found.resolve()
    return [] if found.is_relative_to(mlci_dir) else [found]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
