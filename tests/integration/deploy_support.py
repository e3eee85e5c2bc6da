"""Helpers for the deploy tests (no tests here): a throw-away copy of the project, its commands, its registry.

The copy is made of the working tree's files (what `git ls-files` lists, committed or not, never ignored files),
so a test deploys this checkout's code, roles and playbooks without touching the checkout's own registry,
reports or serving folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlci.artifacts import ArtifactRef
from mlci.registry import Registry

ROOT = Path(__file__).resolve().parents[2]


def copy_project(dest: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():
            target = dest / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return dest


def set_keys(config: Path, **sections: dict[str, Any]) -> None:
    """Replace or add `key = value` lines in mlci.toml sections (values as TOML literals via json)."""
    lines = config.read_text().splitlines()
    for section, values in sections.items():
        start = next(i for i, line in enumerate(lines) if line.split("#")[0].strip() == f"[{section}]")
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
        for key, value in values.items():
            literal = json.dumps(value)
            found = [i for i in range(start + 1, end) if lines[i].split("=")[0].strip() == key]
            if found:
                lines[found[0]] = f"{key} = {literal}"
            else:
                lines.insert(end, f"{key} = {literal}")
                end += 1
    config.write_text("\n".join(lines) + "\n")


@dataclass
class Project:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "mlci.toml"

    def mlci(self, *args: str, rc: int | None = 0, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """`python -m mlci ARGS` in the copy; checks the exit code unless rc is None."""
        env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1", "COLUMNS": "200"}
        run = subprocess.run(
            [sys.executable, "-m", "mlci", *args], cwd=self.root, env=env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
        if rc is not None:
            assert run.returncode == rc, f"mlci {' '.join(args)}: exit {run.returncode}, wanted {rc}:\n" + tail(run)
        return run

    def background(self, *args: str, log: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            return subprocess.Popen([sys.executable, "-m", "mlci", *args], cwd=self.root, stdout=out, stderr=out)

    def registry(self) -> Registry:
        return Registry(self.root / ".mlci" / "registry.db")

    def train(self, seed: int) -> str:
        """`mlci train` with this seed, which must pass its gates; the new run's id."""
        run = self.mlci("train", f"train.seed={seed}")
        assert "gates passed" in run.stdout, tail(run)
        with self.registry() as registry:
            latest = registry.latest_run()
            assert latest is not None
            return latest.id

    def statuses(self, env: str) -> dict[str, dict[str, Any] | None]:
        """Each serving host's /manage/status, asked through SSH (None: unreachable)."""
        from mlci.config import load_config
        from mlci.deploy.rollout import target
        from mlci.deploy.status import fetch

        where = target(load_config(self.config), env)
        return {s.host: s.status for s in fetch(where.hosts)}

    def served_runs(self, env: str) -> dict[str, str | None]:
        return {h: ((s or {}).get("current") or {}).get("run_id") for h, s in self.statuses(env).items()}

    def register(self, ref: ArtifactRef, *, passed: bool = True) -> str:
        """A succeeded run holding `ref` as its model, with a stored evaluation: a candidate as train leaves it."""
        with self.registry() as registry:
            run = registry.create_run(f"test-{ref.sha256}", params={}, environment={})
            registry.add_artifact(run.id, "model", ref.path, ref.sha256, ref.bytes)
            registry.finish_run(run.id)
            registry.add_evaluation(run.id, None, passed, {"gates": []})
            return run.id

    def next_version(self) -> int:
        with self.registry() as registry:
            return max((r.seq for r in registry.runs()), default=0) + 1

    def last_ledger(self) -> Any:
        with self.registry() as registry:
            return registry.ledger()[-1]

    def champion(self) -> str:
        with self.registry() as registry:
            champion = registry.champion()
            assert champion is not None
            return champion.id


def tail(run: subprocess.CompletedProcess[str], chars: int = 4000) -> str:
    return (run.stdout or "")[-chars:] + "\n--- stderr ---\n" + (run.stderr or "")[-chars:]


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
