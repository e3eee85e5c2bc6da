"""The artifact to serve when none is given: the registry champion's model artifact.

Kept small and tolerant of the registry's shape: any run object or dict with `artifacts` whose entries
are paths or have `path` (and maybe `kind`) will do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlci.config import Config
from mlci.errors import RegistryError


def champion_artifact(config: Config) -> Path:
    try:
        from mlci.registry import exists, location, open_registry
    except ImportError as exc:
        raise RegistryError(f"cannot read the registry ({exc}); pass --artifact DIR") from None
    db = location(config)
    if not exists(config):
        raise RegistryError(f"{db}: no registry here, so no champion to serve; pass --artifact DIR")
    registry = open_registry(config)
    try:
        champion = registry.champion()
    finally:
        close = getattr(registry, "close", None)
        if close is not None:
            close()
    if champion is None:
        raise RegistryError(f"{db}: the registry has no champion yet; pass --artifact DIR")
    entries = list(_get(champion, "artifacts") or ())
    entries.sort(key=lambda e: _get(e, "kind") not in (None, "model"))  # model artifacts first
    for entry in entries:
        path = entry if isinstance(entry, str | Path) else _get(entry, "path")
        if path:
            p = Path(path)
            return p if p.is_absolute() else config.path(str(p))
    raise RegistryError(f"{db}: the champion ({_get(champion, 'id') or champion!r}) has no artifact")


def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, str | Path):
        return None
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
