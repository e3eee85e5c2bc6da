"""The artifact to serve when none is given: the registry champion's. Kept tolerant of the registry's shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlci.config import Config
from mlci.errors import RegistryError


def champion_artifact(config: Config) -> Path:
    db = config.path(config.registry.path)
    if not db.exists():
        raise RegistryError(f"{db}: no registry here, so no champion to serve; pass --artifact DIR")
    try:
        from mlci.registry import Registry
    except ImportError as exc:
        raise RegistryError(f"cannot read the registry ({exc}); pass --artifact DIR") from None
    champion = Registry(db).champion()
    if champion is None:
        raise RegistryError(f"{db}: the registry has no champion yet; pass --artifact DIR")
    for entry in _get(champion, "artifacts") or ():
        path = entry if isinstance(entry, str | Path) else _get(entry, "path")
        if path:
            p = Path(path)
            return p if p.is_absolute() else config.path(str(p))
    raise RegistryError(f"{db}: the champion ({_get(champion, 'id') or champion!r}) has no artifact")


def _get(obj: Any, key: str) -> Any:
    return obj.get(key) if isinstance(obj, dict) else getattr(obj, key, None)
