"""Each data file's sha256, cached by its stat (as DVC and git's index do): an unchanged file is not read again.

The cache, `.mlci/data-hashes.json` under the project, maps a resolved path to the file's size, mtime_ns,
ctime_ns and inode, and the sha256 of its content. An entry counts only while all four match a fresh
`os.stat`; anything else (a touch, a rewrite, a copy over it, a chmod) hashes the file again. A file whose
mtime is within `RACY_NS` of the moment it was hashed is not cached: a rewrite of the same size within the same
timestamp tick would otherwise keep the old sha256 (git calls such entries "racily clean").

The cache is an optimisation and never a reason to fail: it is written to a temporary file and renamed over
the old one (a concurrent reader sees the old or the new file, never half of one), entries from a concurrent
run are merged rather than dropped, a cache that cannot be read or parsed is ignored and rebuilt, and one
that cannot be written is skipped. Only the standard library: this runs on the no-op path of `mlci train`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlci.config import Config

CACHE = ".mlci/data-hashes.json"
VERSION = 1
# A file modified less than this long before it was hashed is hashed again next time (filesystem timestamps
# can be as coarse as 2 s, on FAT).
RACY_NS = 2_000_000_000
_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_STAT_KEYS = ("size", "mtime_ns", "ctime_ns", "inode")


def cache_path(config: Config) -> Path:
    return config.path(CACHE)


@dataclass
class Digests:
    """The sha256 (hex) of each file, None for one that is missing or a directory, and the cache entries this
    computation would add or drop: `save()` writes them (a caller may first check that the data is good, so
    that a run on bad data writes nothing)."""

    values: list[str | None]
    cache: Path | None
    fresh: dict[str, dict[str, Any] | None]  # path -> new entry, or None: drop the old one
    before: dict[str, dict[str, Any]]

    def save(self) -> None:
        if self.cache is not None and any(self.fresh.get(k) != self.before.get(k) for k in self.fresh):
            _store(self.cache, self.fresh)


def file_digests(paths: Sequence[Path], cache: Path | None, *, rehash: bool = False) -> list[str | None]:
    """The sha256 (hex) of each file in `paths` (None: missing or a directory), with the cache updated."""
    digests = compute_digests(paths, cache, rehash=rehash)
    digests.save()
    return digests.values


def compute_digests(paths: Sequence[Path], cache: Path | None, *, rehash: bool = False) -> Digests:
    """As file_digests, but the cache is only read: `.save()` on the result writes it.

    A file whose stat matches its entry in `cache` is not opened, unless `rehash`. `cache` None: no cache.
    """
    entries = _load(cache) if cache is not None else {}
    fresh: dict[str, dict[str, Any] | None] = {}
    digests: list[str | None] = []
    for path in paths:
        key = str(path)
        try:
            before = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            digests.append(None)
            fresh[key] = None
            continue
        old = entries.get(key)
        if not rehash and old is not None and _signature(before) == tuple(old[k] for k in _STAT_KEYS):
            digests.append(old["sha256"])
            continue
        started = time.time_ns()
        try:
            digest = _hash_file(path)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            digests.append(None)
            fresh[key] = None
            continue
        digests.append(digest)
        after = os.stat(path)
        if _signature(after) == _signature(before) and before.st_mtime_ns < started - RACY_NS:
            fresh[key] = dict(zip(_STAT_KEYS, _signature(after), strict=True), sha256=digest)
        else:  # changed while being read, or too recently to trust the stat next time
            fresh[key] = None
    return Digests(digests, cache, fresh, entries)


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _load(cache: Path) -> dict[str, dict[str, Any]]:
    """The valid entries of the cache file; {} when it is missing, unreadable or not what this version writes."""
    try:
        raw = json.loads(cache.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict) or raw.get("version") != VERSION or not isinstance(raw.get("files"), dict):
        return {}
    return {path: entry for path, entry in raw["files"].items() if _valid(entry)}


def _valid(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and all(type(entry.get(k)) is int for k in _STAT_KEYS)
        and isinstance(entry.get("sha256"), str)
        and _SHA256.fullmatch(entry["sha256"]) is not None
    )


def _store(cache: Path, fresh: dict[str, dict[str, Any] | None]) -> None:
    """Merge `fresh` into the cache as it is on disk now (another run may have written it meanwhile), atomically."""
    entries = _load(cache)
    for path, entry in fresh.items():
        if entry is None:
            entries.pop(path, None)
        else:
            entries[path] = entry
    body = json.dumps({"version": VERSION, "files": entries}, indent=1, sort_keys=True).encode()
    tmp = None
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{cache.name}.", suffix=".tmp", dir=cache.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.replace(tmp, cache)
        tmp = None
    except OSError:
        pass  # a read-only project, a full disk: the next run hashes again
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
