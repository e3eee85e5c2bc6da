"""The run key reads a data file only when its stat changed (the cache in .mlci/data-hashes.json).

Reading is observed through a spy on mlci.filehash._hash_file, the one place a file's bytes are hashed. The data
files get an mtime a minute in the past first: a file modified within the last seconds is hashed on every run
on purpose (a same-size rewrite in the same timestamp tick would keep its stat).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from test_runkey import _git, make_project
from test_runkey import key_of as computed_key

from mlci import filehash
from mlci.config import load_config

CSV = "data/digits.csv"
SCHEMA = "data/schema.toml"


def key_of(project: Path, *overrides: str):
    """The run key as `mlci train` leaves it: computed, then its data hashes saved once the data checked good."""
    key = computed_key(project, *overrides)
    key.save_data_hashes()
    return key


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many times each file (by name) was read to be hashed."""
    counts: Counter[str] = Counter()
    real = filehash._hash_file

    def spy(path: Path) -> str:
        counts[Path(path).name] += 1
        return real(path)

    monkeypatch.setattr(filehash, "_hash_file", spy)
    return counts


def age(*paths: Path, seconds: int = 60) -> int:
    """Set the files' mtime `seconds` in the past (as data that has lain there a while); the new mtime_ns."""
    old = time.time_ns() - seconds * 1_000_000_000
    for path in paths:
        os.utime(path, ns=(old, old))
    return old


@pytest.fixture
def project(tmp_path: Path) -> Path:
    where = make_project(tmp_path / "p", git=False)
    age(where / CSV, where / SCHEMA)
    return where


def test_an_unchanged_file_is_not_read_again(project: Path, hashed: Counter[str]) -> None:
    first = key_of(project)
    assert hashed == {"digits.csv": 1, "schema.toml": 1}
    cache = json.loads((project / filehash.CACHE).read_text())
    assert cache["files"][str((project / CSV).resolve())]["size"] == (project / CSV).stat().st_size
    hashed.clear()
    second = key_of(project)
    assert hashed == {}, "the second run key must come from the stat cache alone"
    assert second.key == first.key and second.data_hash == first.data_hash


def test_the_cached_key_equals_a_full_hash(project: Path, hashed: Counter[str]) -> None:
    key_of(project)
    cached = key_of(project)
    (project / filehash.CACHE).unlink()
    assert key_of(project).data_hash == cached.data_hash


def test_a_touched_file_is_hashed_again_with_the_same_result(project: Path, hashed: Counter[str]) -> None:
    first = key_of(project)
    hashed.clear()
    age(project / CSV, seconds=30)
    assert key_of(project).key == first.key
    assert hashed == {"digits.csv": 1}


def test_a_rewritten_file_is_hashed_again_and_changes_the_key(project: Path, hashed: Counter[str]) -> None:
    first = key_of(project)
    csv = project / CSV
    csv.write_text(csv.read_text() + csv.read_text().splitlines(keepends=True)[1])
    age(csv, seconds=30)
    hashed.clear()
    changed = key_of(project)
    assert hashed == {"digits.csv": 1}
    assert changed.data_hash != first.data_hash and changed.key != first.key


def test_a_same_size_rewrite_with_its_old_mtime_is_noticed(project: Path, hashed: Counter[str]) -> None:
    """Size, mtime and inode unchanged (as `cp -p` over it in place would leave them): the ctime gives it away."""
    csv = project / CSV
    first = key_of(project)
    mtime = csv.stat().st_mtime_ns
    time.sleep(0.05)  # past the coarse kernel clock's tick, so the ctime moves
    data = bytearray(csv.read_bytes())
    at = data.index(b"\n") + 1
    data[at : at + 2] = b"1," if data[at : at + 2] == b"0," else b"0,"
    with open(csv, "r+b") as f:  # in place: same inode
        f.write(data)
    os.utime(csv, ns=(mtime, mtime))
    hashed.clear()
    changed = key_of(project)
    assert hashed == {"digits.csv": 1}
    assert changed.data_hash != first.data_hash


def test_a_freshly_written_file_is_not_trusted_by_its_stat(project: Path, hashed: Counter[str]) -> None:
    (project / CSV).write_text((project / CSV).read_text())  # mtime: now
    key_of(project)
    key_of(project)
    assert hashed["digits.csv"] == 2 and hashed["schema.toml"] == 1
    age(project / CSV)
    key_of(project)
    hashed.clear()
    key_of(project)
    assert hashed == {}


def test_rehash_reads_every_file_and_keeps_the_key(project: Path, hashed: Counter[str]) -> None:
    first = key_of(project)
    hashed.clear()
    again = key_of(project, "data.rehash=true")
    assert hashed == {"digits.csv": 1, "schema.toml": 1}
    assert again.key == first.key, "data.rehash says how to hash, not what is trained: not part of the key"


def test_train_rehash_flag_sets_the_config_key(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlci import runkey
    from mlci.commands import train

    seen: list[bool] = []

    class Stop(Exception):
        pass

    def compute(config, data_files):
        seen.append(config.data.rehash)
        raise Stop

    monkeypatch.setattr(runkey, "compute", compute)
    for argv, expected in ((["--rehash"], True), ([], False)):
        with pytest.raises(Stop):
            train.run(["--config", str(project / "mlci.toml"), *argv])
        assert seen.pop() is expected


@pytest.mark.parametrize(
    "content",
    [b"", b"{not json", b"\x00\xff" * 100, b'{"version": 1, "files": []}', b'{"version": 99, "files": {}}', b"[]"],
    ids=["empty", "truncated", "binary", "wrong-shape", "other-version", "a-list"],
)
def test_a_corrupt_cache_is_ignored_and_rebuilt(project: Path, hashed: Counter[str], content: bytes) -> None:
    first = key_of(project)
    (project / filehash.CACHE).write_bytes(content)
    hashed.clear()
    assert key_of(project).key == first.key
    assert hashed == {"digits.csv": 1, "schema.toml": 1}
    assert json.loads((project / filehash.CACHE).read_text())["version"] == filehash.VERSION
    hashed.clear()
    key_of(project)
    assert hashed == {}


def test_a_lying_entry_of_the_wrong_shape_is_dropped(project: Path, hashed: Counter[str]) -> None:
    first = key_of(project)
    cache = project / filehash.CACHE
    raw = json.loads(cache.read_text())
    entry = raw["files"][str((project / CSV).resolve())]
    entry["sha256"] = "not a digest"
    cache.write_text(json.dumps(raw))
    hashed.clear()
    assert key_of(project).key == first.key
    assert hashed == {"digits.csv": 1}


def test_the_cache_is_not_code_even_without_gitignore(tmp_path: Path) -> None:
    project = make_project(tmp_path / "g", git=True)
    (project / ".gitignore").unlink()
    _git(project, "commit", "-q", "-am", "no .gitignore")
    age(project / CSV, project / SCHEMA)
    first = key_of(project)
    assert (project / filehash.CACHE).is_file()
    assert key_of(project).key == first.key


def test_concurrent_writers_never_leave_a_broken_cache(tmp_path: Path) -> None:
    files = []
    for i in range(8):
        f = tmp_path / f"f{i}.csv"
        f.write_text(f"x\n{i}\n")
        files.append(f)
    age(*files)
    cache = tmp_path / ".mlci" / "data-hashes.json"
    errors: list[BaseException] = []
    stop = threading.Event()

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        return run

    def writer(path: Path) -> Callable[[], None]:
        def write() -> None:
            for _ in range(30):
                assert filehash.file_digests([path], cache, rehash=True)[0] is not None

        return write

    def reader() -> None:
        while not stop.is_set():
            if cache.exists():
                json.loads(cache.read_bytes())  # never half a file

    threads = [threading.Thread(target=guarded(writer(f))) for f in files]
    watcher = threading.Thread(target=guarded(reader))
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert errors == []
    assert not [p for p in cache.parent.iterdir() if p.name.endswith(".tmp")], "no temporary file left behind"
    assert json.loads(cache.read_text())["version"] == filehash.VERSION


def test_an_unwritable_cache_is_skipped(tmp_path: Path) -> None:
    f = tmp_path / "a.csv"
    f.write_text("x\n1\n")
    age(f)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache's folder should be")
    digests = filehash.file_digests([f, tmp_path / "missing.csv"], blocker / "data-hashes.json")
    assert digests[0] == filehash._hash_file(f) and digests[1] is None


def test_config_key_is_checked(tmp_path: Path) -> None:
    from mlci.errors import ConfigError

    project = make_project(tmp_path / "p", git=False)
    with pytest.raises(ConfigError) as info:
        load_config(project / "mlci.toml", ["data.rehash=1"])
    assert info.value.key == "data.rehash" and "true or false" in info.value.why


def test_a_key_computed_for_data_not_yet_checked_writes_no_cache(project: Path, hashed: Counter[str]) -> None:
    computed_key(project)  # what `mlci train` does before its data check: a failing check must leave nothing
    assert hashed == {"digits.csv": 1, "schema.toml": 1}
    assert not (project / filehash.CACHE).exists()
    key_of(project)  # nothing saved, so both are read again, and saved this time
    assert hashed == {"digits.csv": 2, "schema.toml": 2}
    assert (project / filehash.CACHE).exists()
