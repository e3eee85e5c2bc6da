"""The load test gate end to end: real Locust processes against real `mlci serve` processes on 127.0.0.1.

Each load is a few users for a couple of seconds. The SLO limits are generous for a healthy server and far
below what the slowed server can do: it is started with a large serving.max_delay_ms and max_batch_size, so
a request that meets another in the queue waits the full delay (500 ms) for a batch to fill. A lone request
still goes straight through (the batcher's fast path), so the slowed server's median may look healthy;
with four closed-loop users far more than 5% of requests meet another, which puts its p95 at the delay.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mlci.loadtest import read_summary

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "mlci.toml"
SLOW_DELAY_MS = 500
READY_TIMEOUT_S = 90
RUN_TIMEOUT_S = 180
# Limits a healthy server meets by orders of magnitude and the slowed one cannot (p50 >= its delay).
SLO = [
    "loadtest.p50_ms=200", "loadtest.p95_ms=200", "loadtest.p99_ms=4000", "loadtest.min_rps=1",
    "loadtest.max_error_ratio=0.0", "loadtest.max_p95_vs_champion=0",
]  # fmt: skip
LOAD = ["--users", "2", "--spawn-rate", "10", "--duration", "2"]
SLOW_LOAD = ["--users", "4", "--spawn-rate", "20", "--duration", "2"]


# --- helpers: artifacts, server processes, the CLI ---------------------------------------------------


def _artifact(root: Path, version: int) -> Path:
    """A real digits-shaped artifact (untrained MLP), as tests/conftest.py's make_artifact builds it."""
    import torch

    from mlci.artifacts import package
    from mlci.model import build_model

    torch.manual_seed(version)
    features = [f"px_{r}_{c}" for r in range(8) for c in range(8)]
    model = build_model("mlci.model:mlp", {"hidden": [32]}, len(features), 10)
    smoke = torch.randint(0, 17, (4, 64), generator=torch.Generator().manual_seed(version)).float().tolist()
    ref = package(
        root, model, model_name="digits", version=version, run_id=f"test-{version}", factory="mlci.model:mlp",
        params={"hidden": [32]}, features=features, classes=list(range(10)), smoke_input=smoke, config={},
    )  # fmt: skip
    return ref.path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCUST_", "MLCI_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return {**env, **extra}


@contextlib.contextmanager
def served(
    artifact: Path, workdir: Path, *overrides: str, env: dict[str, str] | None = None
) -> Iterator[dict[str, Any]]:
    """`mlci serve` on free loopback ports; yields its ready line (url, management_url, ...)."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "serve.log"
    cmd = [sys.executable, "-m", "mlci", "serve", "--artifact", str(artifact), "--config", str(CONFIG),
           "serving.host=127.0.0.1", "serving.port=0", "serving.management_port=0", *overrides]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=_env(**(env or {})), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        info = None
        while info is None:
            match = re.search(r"^mlci serve ready (\{.*\})$", log.read_text(errors="replace"), re.M)
            if match:
                info = json.loads(match.group(1))
            elif proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlci serve did not become ready:\n{log.read_text(errors='replace')[-3000:]}")
            else:
                time.sleep(0.1)
        yield info
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def loadtest(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mlci", "loadtest", "--config", str(CONFIG), *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(**(env or {})), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def _registry_override(tmp: Path) -> str:
    return f"registry.path={json.dumps(str(tmp / 'registry.db'))}"


def _stats_row(output: Path) -> dict[str, str]:
    with open(output / "locust_stats.csv", newline="") as handle:
        return next(r for r in csv.DictReader(handle) if r["Name"] == "Aggregated")


# --- fixtures: one healthy and one slowed server for the module ------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("loadtest")


@pytest.fixture(scope="module")
def artifacts(work: Path) -> list[Path]:
    return [_artifact(work / "artifacts", 1), _artifact(work / "artifacts", 2)]


@pytest.fixture(scope="module")
def healthy(artifacts: list[Path], work: Path) -> Iterator[dict[str, Any]]:
    with served(artifacts[0], work / "healthy") as info:
        yield info


@pytest.fixture(scope="module")
def slowed(artifacts: list[Path], work: Path) -> Iterator[dict[str, Any]]:
    with served(artifacts[0], work / "slowed", f"serving.max_delay_ms={SLOW_DELAY_MS}",
                "serving.max_batch_size=1024") as info:  # fmt: skip
        yield info


@pytest.fixture(scope="module")
def healthy_run(
    healthy: dict[str, Any], artifacts: list[Path], work: Path
) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = work / "healthy-run"
    result = loadtest("--url", healthy["url"], "--artifact", str(artifacts[0]), "--output", str(out), *LOAD,
                      *SLO, _registry_override(work), cwd=work)  # fmt: skip
    return result, out


# --- the gate ----------------------------------------------------------------------------------------


def test_gate_passes_against_a_healthy_server(healthy_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, out = healthy_run
    assert result.returncode == 0, result.stdout + result.stderr
    summary = read_summary(out)
    assert summary["passed"] is True
    assert summary["failed"] == []
    assert summary["figures"]["requests"] > 0
    assert summary["figures"]["failures"] == 0
    assert summary["payload"]["source"].startswith("smoke input of")
    by_name = {c["name"]: c for c in summary["checks"]}
    assert {"p50_ms", "p95_ms", "p99_ms", "error_ratio", "rps", "p95_vs_champion"} <= set(by_name)
    assert all(c["passed"] for c in by_name.values())
    assert by_name["p95_vs_champion"]["skipped"] is True


def test_gate_fails_against_a_slowed_server(slowed: dict[str, Any], work: Path) -> None:
    out = work / "slowed-run"
    result = loadtest("--url", slowed["url"], "--output", str(out), *SLOW_LOAD, *SLO, _registry_override(work),
                      cwd=work)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: load test SLO failed: ")
    p95 = float(_stats_row(out)["95%"])
    assert f"p95_ms = {p95:g}, limit <= 200: FAILED" in error  # named, with its value and its limit
    summary = read_summary(out)
    assert summary["passed"] is False
    assert "p95_ms" in {c["name"] for c in summary["checks"] if not c["passed"]}
    # Without --artifact the rows come from the project's bundled data, in the schema's feature order.
    assert summary["payload"]["source"].startswith("first ")


def test_summary_csv_html_and_json_agree(healthy_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = healthy_run
    summary = read_summary(out)
    for key in ("stats_csv", "history_csv", "failures_csv", "html", "json", "histogram", "log"):
        assert Path(summary["files"][key]).is_file(), key
    row = _stats_row(out)
    figures = summary["figures"]
    assert int(row["Request Count"]) == figures["requests"]
    assert int(row["Failure Count"]) == figures["failures"]
    for column, key in (("50%", "p50_ms"), ("95%", "p95_ms"), ("99%", "p99_ms"), ("Requests/s", "rps")):
        assert float(row[column]) == figures[key], column
    # Locust's JSON (written at exit) and HTML report count the same requests as its CSV.
    entries = json.loads((out / "locust.json").read_text())
    assert sum(e["num_requests"] for e in entries) == figures["requests"]
    assert sum(sum(e["response_times"].values()) for e in entries) == figures["requests"]
    html = (out / "locust.html").read_text()
    assert f'"num_requests": {figures["requests"]}' in html
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_distributed_mode_with_two_workers(healthy: dict[str, Any], artifacts: list[Path], work: Path) -> None:
    out = work / "distributed-run"
    result = loadtest("--url", healthy["url"], "--artifact", str(artifacts[0]), "--output", str(out), *LOAD,
                      "--workers", "2", *SLO, _registry_override(work), cwd=work)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    summary = read_summary(out)
    assert summary["load"]["workers"] == 2
    assert summary["figures"]["requests"] > 0 and summary["figures"]["failures"] == 0
    assert "to 2 ready workers" in (out / "locust.log").read_text()
    worker_logs = sorted(p.name for p in out.glob("locust-worker-*.log"))
    assert worker_logs == ["locust-worker-1.log", "locust-worker-2.log"]
    assert int(_stats_row(out)["Request Count"]) == summary["figures"]["requests"]


def test_champion_p95_comparison_and_record(slowed: dict[str, Any], artifacts: list[Path], work: Path) -> None:
    """p95 may be at most k x the champion's recorded p95; --record stores this run's figures."""
    from mlci.registry import Registry

    db = work / "champion" / "registry.db"
    with Registry(db) as registry:
        run = registry.create_run("key", params={}, environment={})
        registry.finish_run(run.id)
        registry.promote(run.id, evidence={"test": True})
        registry.log_metric(run.id, "loadtest_p95_ms", 100.0)  # the slowed server's p95 is >= its delay
    lenient = ["loadtest.p50_ms=60000", "loadtest.p95_ms=60000", "loadtest.p99_ms=60000", "loadtest.min_rps=0",
               "loadtest.max_error_ratio=1.0", f"registry.path={json.dumps(str(db))}"]  # fmt: skip
    out = work / "champion-run"
    result = loadtest("--url", slowed["url"], "--output", str(out), *SLOW_LOAD, *lenient,
                      "loadtest.max_p95_vs_champion=1.5", "--record", "--run-id", run.id, cwd=work)  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "p95_vs_champion = " in result.stderr and "limit <= 160: FAILED" in result.stderr  # 1.5 x 100 + 10
    summary = read_summary(out)
    assert summary["champion"] == {"run_id": run.id, "p95_ms": 100.0, "note": f"loadtest_p95_ms of champion {run.id}"}
    assert [c["name"] for c in summary["checks"] if not c["passed"]] == ["p95_vs_champion"]
    with Registry(db) as registry:  # recorded: the champion's p95 is now this run's
        metrics = registry.metrics(run.id)
    assert metrics["loadtest_p95_ms"] == summary["figures"]["p95_ms"]
    assert set(metrics) >= {"loadtest_p50_ms", "loadtest_p95_ms", "loadtest_p99_ms", "loadtest_rps"}

    # Measured against its own recorded p95 (with room for a busy machine), the same server now passes.
    again = loadtest("--url", slowed["url"], "--output", str(out), *SLOW_LOAD, *lenient,
                     "loadtest.max_p95_vs_champion=3", cwd=work)  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    assert read_summary(out)["champion"]["p95_ms"] == metrics["loadtest_p95_ms"]


# --- bad arguments -----------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--users", "0"], "argument --users: must be > 0, got '0'"),
        (["--workers", "-1"], "argument --workers: must be >= 0, got '-1'"),
        (["--duration", "ten"], "argument --duration: must be a whole number, got 'ten'"),
        (["--spawn-rate", "nan"], "argument --spawn-rate: must be a finite number > 0, got 'nan'"),
        (["--url", "ftp://127.0.0.1:21"], "--url 'ftp://127.0.0.1:21': must be an http:// or https:// URL"),
        (["--url", "http://127.0.0.1:99999"], "the port is not a number in 0-65535"),
        (["--url", "http://127.0.0.1:{closed}"], "cannot reach the server"),
        (["--artifact", "/nonexistent/artifact"], "--artifact /nonexistent/artifact: no such file or directory"),
        (["loadtest.users=0"], "loadtest.users = 0: must be > 0"),
        (["loadtest.bogus=1"], "loadtest.bogus = 1: unknown key"),
        (["--nonsense"], "unrecognized arguments: --nonsense"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(args: list[str], message: str, tmp_path: Path) -> None:
    args = [a.replace("{closed}", str(_closed_port())) for a in args]
    if "--url" not in args:
        args += ["--url", f"http://127.0.0.1:{_closed_port()}"]
    result = loadtest(*args, "--output", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("Error: "), result.stderr
    assert message in result.stderr
    assert not (tmp_path / "out" / "summary.json").exists()


def test_record_without_a_run_exits_2(healthy: dict[str, Any], work: Path, tmp_path: Path) -> None:
    result = loadtest("--url", healthy["url"], "--record", "--output", str(tmp_path), _registry_override(work),
                      cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--record needs the run to record into: give --run-id or --artifact" in result.stderr
    assert not list(tmp_path.glob("locust*"))  # refused before any load was sent


def test_artifact_that_is_not_served_exits_2(healthy: dict[str, Any], artifacts: list[Path], tmp_path: Path) -> None:
    result = loadtest("--url", healthy["url"], "--artifact", str(artifacts[1]), "--output", str(tmp_path),
                      cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"--artifact {artifacts[1]}: is version 2 but {healthy['url']} serves model 'digits' in version(s) 1" in (
        result.stderr
    )


def test_wrong_model_name_exits_2(healthy: dict[str, Any], tmp_path: Path) -> None:
    result = loadtest("--url", healthy["url"], "--model", "nope", "--output", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"--url {healthy['url']}: GET {healthy['url']}/v2/models/nope answered HTTP 404" in result.stderr


# --- hot swap under load, with bearer tokens ---------------------------------------------------------

TOKENS = {"MLCI_TEST_INFER_TOKEN": "infer-secret", "MLCI_TEST_MANAGE_TOKEN": "manage-secret"}
TOKEN_KEYS = ["serving.token_env=MLCI_TEST_INFER_TOKEN", "serving.management_token_env=MLCI_TEST_MANAGE_TOKEN"]


def _manage(url: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKENS['MLCI_TEST_MANAGE_TOKEN']}"}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method="GET" if body is None else "POST", headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_hot_swap_under_load_fails_no_request(artifacts: list[Path], work: Path) -> None:
    """Swap to version 2, roll back to 1 and swap to 2 again while Locust runs: not one request fails.

    The server wants a bearer token (serving.token_env): without it the load test stops at its preflight
    (exit 2); with it every request carries the token.
    """
    out = work / "hotswap-run"
    out.mkdir()
    with served(artifacts[0], work / "hotswap", *TOKEN_KEYS, env=TOKENS) as info:
        args = ["--url", info["url"], "--artifact", str(artifacts[0]), "--output", str(out), *TOKEN_KEYS]
        refused = loadtest(*args, cwd=work)  # no token in the environment
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "answered HTTP 401" in refused.stderr

        manage = info["management_url"]
        cmd = [sys.executable, "-m", "mlci", "loadtest", "--config", str(CONFIG), *args, "--users", "3",
               "--spawn-rate", "10", "--duration", "6", *SLO, _registry_override(work)]  # fmt: skip
        with open(out / "cli.log", "w") as log:
            proc = subprocess.Popen(cmd, cwd=work, env=_env(**TOKENS), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while "All users spawned" not in _read(out / "locust.log"):  # the load is on
                assert proc.poll() is None and time.monotonic() < deadline, _read(out / "cli.log")
                time.sleep(0.1)
            versions = [_manage(manage, "/manage/load", {"artifact": str(artifacts[1])})["current"]["version"]]
            versions.append(_manage(manage, "/manage/rollback", {})["current"]["version"])
            versions.append(_manage(manage, "/manage/load", {"artifact": str(artifacts[1])})["current"]["version"])
            swapped_under_load = proc.poll() is None and "run-time limit reached" not in _read(out / "locust.log")
            code = proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert versions == ["2", "1", "2"]
    assert swapped_under_load, "the swaps outlasted the load; the test proves nothing (lengthen --duration)"
    assert code == 0, _read(out / "cli.log")
    summary = read_summary(out)
    assert summary["figures"]["requests"] > 0
    assert summary["figures"]["failures"] == 0, summary["errors"]


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""
