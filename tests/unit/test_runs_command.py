"""`mlci runs` and `mlci runs show` on a registry filled by real trainings, evaluations and ledger writes."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests.runs_registry import Filled, fill

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Filled:
    return fill(tmp_path_factory.mktemp("runs") / "project")


def mlci(filled: Filled, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mlci", *args, "--config", str(filled.config_path)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def _rows(stdout: str) -> dict[str, str]:
    return {m.group(1): line for line in stdout.splitlines() if (m := re.match(r"^\s*\*?\s+(r\d{4})\s", line))}


def test_runs_lists_every_run_newest_first_with_metrics_intervals_verdict_and_champion(filled: Filled) -> None:
    out = mlci(filled, "runs")
    assert out.returncode == 0, out.stderr
    rows = _rows(out.stdout)
    assert list(rows) == ["r0004", "r0003", "r0002", "r0001"]  # newest first
    assert rows["r0001"].lstrip().startswith("*")  # rolled back to: the champion now
    assert not any(rows[r].lstrip().startswith("*") for r in ("r0002", "r0003", "r0004"))
    assert "passed" in rows["r0002"] and "failed (min_accuracy)" in rows["r0003"]
    assert "failed" in rows["r0004"] and "not evaluated" in rows["r0004"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=filled.config_path.parent, capture_output=True, text=True)
    assert commit.stdout.strip()[:12] in rows["r0002"]
    assert re.search(r"0\.\d{4} \[0\.\d{4}, 0\.\d{4}\]", rows["r0002"])  # accuracy with its interval


def test_runs_limit_keeps_the_newest(filled: Filled) -> None:
    out = mlci(filled, "runs", "--limit", "2")
    assert out.returncode == 0, out.stderr
    assert list(_rows(out.stdout)) == ["r0004", "r0003"]
    bad = mlci(filled, "runs", "--limit", "0")
    assert bad.returncode == 2 and "--limit = 0" in bad.stderr


def test_runs_show_gives_params_environment_artifacts_metrics_gates_and_ledger(filled: Filled) -> None:
    out = mlci(filled, "runs", "show", "r0003")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert re.search(r"gates\.min_accuracy\s+0\.999", text)  # params: the resolved config of that run
    assert re.search(r"torch\s+\d", text)  # environment
    sha = re.search(r"model\s+\S+\s+([0-9a-f]{64})\s+\d+", text)  # artifact with its full sha256
    assert sha and Path(filled.config.path(".mlci/artifacts"), sha.group(1)).is_dir()
    assert re.search(r"eval_accuracy_low\s+0\.\d+", text)  # metrics
    assert re.search(r"min_accuracy\s+failed\s+0\.\d+\s+0\.999", text)  # gates
    assert re.search(r"refused\s+.*" + re.escape(filled.evil), text)  # ledger entry and its reason


def test_runs_show_of_a_rollback_says_where_it_came_from(filled: Filled) -> None:
    out = mlci(filled, "runs", "show", "r0001")
    assert out.returncode == 0, out.stderr
    assert "r0001 (champion)" in out.stdout
    assert "first champion" in out.stdout and re.search(r"rolled back .*rolled back from run r0002", out.stdout)


def test_runs_show_of_an_unknown_run_exits_2_naming_it(filled: Filled) -> None:
    out = mlci(filled, "runs", "show", "r9999")
    assert out.returncode == 2 and "r9999" in out.stderr


def test_runs_without_a_registry_exits_2_with_a_hint(tmp_path: Path) -> None:
    (tmp_path / "mlci.toml").write_text("")
    out = subprocess.run(
        [sys.executable, "-m", "mlci", "runs", "--config", str(tmp_path / "mlci.toml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 2 and "no registry yet" in out.stderr


def test_runs_on_a_terminal_draws_a_rich_table(filled: Filled) -> None:
    main, child = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "mlci", "runs", "--config", str(filled.config_path)],
            stdout=child, stderr=subprocess.PIPE, timeout=120, check=False,
            env={**os.environ, "COLUMNS": "200", "TERM": "xterm"},
        )  # fmt: skip
        os.close(child)
        child = -1
        chunks = []
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the writer is gone and everything was read
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(main)
        if child >= 0:
            os.close(child)
    assert proc.returncode == 0, proc.stderr
    screen = b"".join(chunks).decode("utf-8", "replace")
    assert "┃" in screen or "│" in screen  # rich's box drawing, not the plain text of a pipe
    assert "r0003" in screen
