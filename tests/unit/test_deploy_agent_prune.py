"""The host agent's prune: a host keeps its newest artifacts and never loses one the server has loaded.

The loaded models come from a real `mlci serve` (its management API), swapped by the agent itself.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from mlci.deploy import agent
from serve_process import serving


def _deliver(root: Path, artifact, age_s: float) -> str:
    """Put `artifact` under root/artifacts/<sha256>/ as the deploy does, first delivered `age_s` seconds ago."""
    folder = shutil.copytree(artifact.path, root / "artifacts" / artifact.sha256)
    stamp = time.time() - age_s
    os.utime(folder, (stamp, stamp))
    return artifact.sha256


def _plain_folder(root: Path, name: str, age_s: float) -> str:
    folder = root / "artifacts" / name
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text("{}")
    stamp = time.time() - age_s
    os.utime(folder, (stamp, stamp))
    return name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _left(root: Path) -> set[str]:
    return {p.name for p in (root / "artifacts").iterdir() if p.is_dir() and not p.is_symlink()}


def test_prune_keeps_the_newest_and_the_one_current_points_at_when_no_server_runs(tmp_path: Path) -> None:
    root = tmp_path / "serve"
    names = [_plain_folder(root, f"{i:064x}", age_s=100 * (i + 1)) for i in range(5)]  # names[0] is newest
    agent.point_current(root, names[4])  # the oldest: a restart would serve it
    out = agent.prune(root, keep=2, port=_free_port())
    assert _left(root) == {names[0], names[1], names[4]}
    assert sorted(out["removed"]) == sorted([names[2], names[3]]) and out["changed"] is True
    again = agent.prune(root, keep=2, port=_free_port())
    assert again == {"changed": False, "removed": [], "kept": [names[0], names[1], names[4]]}


def test_prune_never_removes_the_models_a_running_server_has_loaded(make_artifact, tmp_path: Path) -> None:
    root = tmp_path / "serve"
    first = _deliver(root, make_artifact(version=1, seed=1), age_s=1000)
    second = _deliver(root, make_artifact(version=2, seed=2), age_s=900)
    newer = [_plain_folder(root, f"{i:064x}", age_s=10 * (i + 1)) for i in range(3)]
    agent.point_current(root, first)
    with serving(root / "artifacts" / "current", tmp_path / "serve") as server:
        mport = urlsplit(server.management_url).port
        assert mport is not None
        swapped = agent.swap(root, second, mport)  # the server now has second loaded, first as its previous
        assert swapped["changed"] and swapped["previous_sha256"] == first
        status = json.loads(subprocess.run(
            [sys.executable, "-m", "mlci.deploy.agent", "status", "--management-port", str(mport)],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout)["status"]  # fmt: skip
        assert (status["current"]["sha256"], status["previous"]["sha256"]) == (second, first)

        out = agent.prune(root, keep=1, port=mport)
    # The two oldest folders are the loaded models: they stay; of the rest only the newest is kept.
    assert _left(root) == {first, second, newer[0]}
    assert sorted(out["removed"]) == sorted(newer[1:])
