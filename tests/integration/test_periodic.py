"""`python -m mlci periodic` end to end, in real subprocesses, on a copy of the project in tmp_path: the no-op,
globbed data files, the lock between two real processes, pruned reports and the webhook (a real HTTP server on
127.0.0.1 in this test)."""

from __future__ import annotations

import http.server
import json
import os
import platform
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.integration.test_train import make_project, mlci, registry_of

pytestmark = pytest.mark.slow

TOKEN = "s3cr3t-t0ken-4711"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = make_project(tmp_path_factory.mktemp("periodic") / "project")
    first = mlci(where, "periodic")
    assert first.returncode == 0, first.stdout + first.stderr
    assert re.search(r"^trained run r0001", first.stdout, re.M)
    return where


def test_nothing_changed_is_a_no_op(project: Path) -> None:
    done = mlci(project, "periodic")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("up to date: run r0001")
    with registry_of(project) as registry:
        assert len(registry.runs()) == 1


def test_a_params_change_retrains_and_reports(project: Path) -> None:
    done = mlci(project, "periodic", "train.seed=3")
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"^trained run (r\d+)", done.stdout, re.M)
    assert found and (project / f"reports/{found.group(1)}/report.html").is_file()
    assert mlci(project, "periodic", "train.seed=3").stdout.startswith(f"up to date: run {found.group(1)}")


def test_two_periodic_runs_started_together_one_runs_the_other_says_locked(project: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(project / "python"))
    cmd = [sys.executable, "-m", "mlci", "periodic", "train.seed=5"]
    procs = [
        subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    locked = [i for i, (out, _) in enumerate(outs) if out.startswith("locked: ")]
    assert len(locked) == 1, outs
    other = procs[1 - locked[0]]
    line = outs[locked[0]][0].strip()
    assert re.fullmatch(rf"locked: periodic run by pid {other.pid} on {re.escape(platform.node())} since \S+Z", line)
    assert re.search(r"^trained run r\d+", outs[1 - locked[0]][0], re.M)
    with registry_of(project) as registry:
        assert len([r for r in registry.runs() if r.params["train"]["seed"] == 5]) == 1


def test_keep_reports_prunes_old_reports_but_never_the_champions(project: Path) -> None:
    with registry_of(project) as registry:
        champion = registry.champion().id
    done = mlci(project, "periodic", "train.seed=6", "periodic.keep_reports=1")
    assert done.returncode == 0, done.stdout + done.stderr
    newest = re.search(r"^trained run (r\d+)", done.stdout, re.M).group(1)
    left = sorted(p.name for p in (project / "reports").iterdir() if re.fullmatch(r"r\d+", p.name))
    assert left == sorted({champion, newest}), done.stdout
    assert "reports pruned:" in done.stdout


# --- data.files globs ----------------------------------------------------------------------------------------


def _split_data(project: Path, parts: int) -> list[str]:
    lines = (project / "data/digits.csv").read_text().splitlines(keepends=True)
    header, rows = lines[0], lines[1:]
    folder = project / "data/parts"
    folder.mkdir()
    size = -(-len(rows) // parts)
    for i in range(parts):
        (folder / f"part-{i}.csv").write_text(header + "".join(rows[i * size : (i + 1) * size]))
    return [header, *rows]


def test_a_new_file_matching_a_data_glob_retrains(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    _split_data(project, 3)
    hold = project / "data/parts/part-2.csv"
    held = hold.read_text()
    hold.unlink()
    glob = 'data.files=["data/parts/*.csv"]'
    first = mlci(project, "periodic", glob)
    assert first.returncode == 0, first.stdout + first.stderr
    assert mlci(project, "periodic", glob).stdout.startswith("up to date: run r0001")
    hold.write_text(held)  # a new file lands in the data directory
    again = mlci(project, "periodic", glob)
    assert re.search(r"^trained run r0002", again.stdout, re.M), again.stdout + again.stderr
    data = mlci(project, "data", glob)
    assert "data/parts/part-0.csv sha256:" in data.stdout and "data/parts/part-2.csv sha256:" in data.stdout


def test_a_data_glob_matching_nothing_is_a_config_error(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", git=False)
    done = mlci(project, "periodic", 'data.files=["data/nowhere/*.csv"]')
    assert done.returncode == 2
    assert "data.files = 'data/nowhere/*.csv': the pattern matches no file" in done.stderr


# --- the webhook ----------------------------------------------------------------------------------------------


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[tuple[str, dict]]
    status = 200

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((self.path, json.loads(body)))
        self.send_response(type(self).status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[tuple[str, type[_Hook]]]:
    handler = type("Hook", (_Hook,), {"received": [], "status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hooks/{TOKEN}?key={TOKEN}", handler
    finally:
        server.shutdown()
        server.server_close()


def _periodic_with_hook(project: Path, url: str, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(project / "python"), MLCI_TEST_WEBHOOK=url)
    return subprocess.run(
        [sys.executable, "-m", "mlci", "periodic", "periodic.webhook_env=MLCI_TEST_WEBHOOK", *overrides],
        cwd=project, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def _no_secret_written(project: Path, *texts: str) -> None:
    for text in texts:
        assert TOKEN not in text
    for path in [*(project / "reports").rglob("*"), *(project / ".mlci").rglob("*")]:
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_the_webhook_gets_the_verdict_and_the_token_never_shows(tmp_path: Path, hook) -> None:
    url, handler = hook
    project = make_project(tmp_path / "p")
    done = _periodic_with_hook(project, url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "webhook: verdict sent to http://127.0.0.1 (HTTP 200)" in done.stdout
    ((path, payload),) = handler.received
    assert path == f"/hooks/{TOKEN}?key={TOKEN}"
    assert payload["run_id"] == "r0001" and payload["verdict"] == "passed" and payload["deployed"] is False
    assert payload["metrics"]["eval_accuracy"] > 0.5
    assert {g["name"] for g in payload["gates"]} == {"min_accuracy", "min_macro_f1", "champion"}
    _no_secret_written(project, done.stdout, done.stderr)
    # A no-op sends nothing: the verdict did not change.
    assert _periodic_with_hook(project, url).stdout.startswith("up to date")
    assert len(handler.received) == 1


def test_a_failing_webhook_is_logged_and_changes_no_exit_code(tmp_path: Path, hook) -> None:
    url, handler = hook
    handler.status = 500
    project = make_project(tmp_path / "p")
    failed_gate = _periodic_with_hook(project, url, "gates.min_accuracy=0.9999")
    assert failed_gate.returncode == 1, failed_gate.stdout + failed_gate.stderr
    assert "webhook: POST to http://127.0.0.1 failed: HTTP 500" in failed_gate.stdout
    assert handler.received[0][1]["verdict"] == "failed"
    refused = _periodic_with_hook(project, "http://127.0.0.1:1/hooks/" + TOKEN, "train.seed=9")
    assert refused.returncode == 0, refused.stdout + refused.stderr
    assert "webhook: POST to http://127.0.0.1 failed:" in refused.stdout
    _no_secret_written(project, failed_gate.stdout, failed_gate.stderr, refused.stdout, refused.stderr)
