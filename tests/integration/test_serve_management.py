"""Hot swap, rollback and refusals through the management API; tokens; startup refusals. Real processes."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_serve_support import CONFIG, infer_body, make_artifact, serving

from artifact_factory import break_smoke_test, corrupt_one_byte


def served_version(client: httpx.Client, path: str = "/v2/models/digits/infer") -> str:
    response = client.post(path, json=infer_body())
    assert response.status_code == 200, response.text
    return response.json()["model_version"]


def test_swap_rollback_and_refused_artifacts(tmp_path: Path) -> None:
    v1 = make_artifact(tmp_path / "a", version=1, seed=1)
    v2 = make_artifact(tmp_path / "a", version=2, seed=2)
    corrupt = corrupt_one_byte(make_artifact(tmp_path / "a", version=3, seed=3), tmp_path / "corrupt")
    smoke_fails = break_smoke_test(make_artifact(tmp_path / "a", version=4, seed=4), tmp_path / "smoke")

    with serving(v1, tmp_path / "serve") as server:
        api = httpx.Client(base_url=server.management_url, timeout=60)
        client = httpx.Client(base_url=server.url, timeout=30)
        status = api.get("/manage/status").json()
        assert status["current"]["version"] == "1" and status["previous"] is None and status["loading"] is None

        # N+1 loads beside N, then serves; N stays loaded (and reachable by version).
        loaded = api.post("/manage/load", json={"artifact": str(v2)})
        assert loaded.status_code == 200, loaded.text
        assert loaded.json()["current"]["version"] == "2" and loaded.json()["previous"]["version"] == "1"
        assert served_version(client) == "2"
        assert served_version(client, "/v2/models/digits/versions/1/infer") == "1"
        assert client.get("/v2/models/digits").json()["versions"] == ["2", "1"]
        assert 'mlci_model_version{model="digits"} 2.0' in client.get("/metrics").text

        # One changed byte: refused with a clear error, version 2 keeps serving.
        refused = api.post("/manage/load", json={"artifact": str(corrupt)})
        assert refused.status_code == 422
        assert "does not match the manifest" in refused.json()["error"] and "refusing" in refused.json()["error"]
        assert refused.json()["status"]["current"]["version"] == "2"
        assert served_version(client) == "2"

        # A smoke test that fails: refused, version 2 keeps serving, version 1 is still the previous one.
        refused = api.post("/manage/load", json={"artifact": str(smoke_fails)})
        assert refused.status_code == 422 and "smoke test failed" in refused.json()["error"]
        assert served_version(client) == "2"
        assert api.get("/manage/status").json()["previous"]["version"] == "1"

        # Instant rollback, and back again.
        assert api.post("/manage/rollback").json()["current"]["version"] == "1"
        assert served_version(client) == "1"
        assert api.post("/manage/rollback").json()["current"]["version"] == "2"

        # Expected sha256 given by the deployer must match.
        wrong = api.post("/manage/load", json={"artifact": str(v1), "sha256": "0" * 64})
        assert wrong.status_code == 422 and "is not the expected" in wrong.json()["error"]

        for body, needle in (
            (b"nope", "body: not valid JSON"),
            (b"{}", '{"artifact": "<artifact directory>"}'),
            (b'{"artifact": 5}', '{"artifact": "<artifact directory>"}'),
        ):
            response = api.post("/manage/load", content=body)
            assert response.status_code == 400 and needle in response.json()["error"]
        missing = api.post("/manage/load", json={"artifact": str(tmp_path / "nothing")})
        assert missing.status_code == 422 and "not an artifact directory" in missing.json()["error"]
        assert api.get("/manage/nothing").status_code == 404
        assert api.get("/manage/load").status_code == 405
        assert served_version(client) == "2"
        api.close()
        client.close()


def test_rollback_without_previous_is_409(tmp_path: Path) -> None:
    with serving(make_artifact(tmp_path / "a"), tmp_path / "serve") as server:
        response = httpx.post(f"{server.management_url}/manage/rollback", timeout=30)
        assert response.status_code == 409 and "no previous model" in response.json()["error"]


def test_bearer_tokens_on_inference_and_management(tmp_path: Path) -> None:
    env = {"MLCI_TEST_INFER_TOKEN": "s3cret-infer", "MLCI_TEST_MGMT_TOKEN": "s3cret-mgmt"}
    overrides = ("serving.token_env=MLCI_TEST_INFER_TOKEN", "serving.management_token_env=MLCI_TEST_MGMT_TOKEN")
    with serving(make_artifact(tmp_path / "a"), tmp_path / "serve", *overrides, env=env) as server:
        infer = f"{server.url}/v2/models/digits/infer"
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret-infer"}):
            response = httpx.post(infer, json=infer_body(), headers=headers, timeout=30)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
            assert response.json() == {"error": "missing or wrong bearer token"}
        ok = httpx.post(infer, json=infer_body(), headers={"authorization": "Bearer s3cret-infer"}, timeout=30)
        assert ok.status_code == 200
        assert httpx.get(f"{server.url}/v2/models/digits", timeout=30).status_code == 401
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=30).status_code == 200  # probes stay open

        status = f"{server.management_url}/manage/status"
        assert httpx.get(status, timeout=30).status_code == 401
        assert httpx.get(status, headers={"authorization": "Bearer s3cret-infer"}, timeout=30).status_code == 401
        assert httpx.get(status, headers={"authorization": "Bearer s3cret-mgmt"}, timeout=30).status_code == 200


def run_serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    full_env = {k: v for k, v in os.environ.items() if k != "MLCI_MANAGEMENT_TOKEN"} | (env or {})
    cmd = [sys.executable, "-m", "mlci", "serve", "--config", str(CONFIG), "serving.port=0",
           "serving.management_port=0", *args]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=full_env)


@pytest.mark.parametrize(
    ("why", "make", "args", "needle"),
    [
        ("corrupt weights", "corrupt", (), "does not match the manifest"),
        ("smoke test fails", "smoke", (), "smoke test failed"),
        ("management open to the network without a token", "ok", ("serving.management_host=0.0.0.0",),
         "serving.management_token_env"),
        ("inference token variable unset", "ok", ("serving.token_env=MLCI_TEST_UNSET_TOKEN",),
         "'MLCI_TEST_UNSET_TOKEN' is unset or empty"),
        ("unknown serving key", "ok", ("serving.nope=1",), "serving.nope"),
    ],
)  # fmt: skip
def test_startup_refusals_exit_2_with_the_reason(tmp_path: Path, why: str, make: str, args: tuple, needle: str) -> None:
    artifact = make_artifact(tmp_path / "a")
    if make == "corrupt":
        artifact = corrupt_one_byte(artifact, tmp_path / "bad")
    elif make == "smoke":
        artifact = break_smoke_test(artifact, tmp_path / "bad")
    result = run_serve("--artifact", str(artifact), *args)
    assert result.returncode == 2, (why, result.stdout, result.stderr)
    assert result.stderr.startswith("Error: ") and needle in result.stderr, (why, result.stderr)
    assert "mlci serve ready" not in result.stdout


def test_busy_port_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_serve("--artifact", str(make_artifact(tmp_path / "a")), f"serving.port={port}")
    assert result.returncode == 2 and f"serving.port = {port}: cannot listen on 127.0.0.1:{port}" in result.stderr


def test_without_artifact_or_registry_the_error_says_what_to_do(tmp_path: Path) -> None:
    result = run_serve(f"registry.path={tmp_path / 'none.db'}")
    assert result.returncode == 2 and "pass --artifact DIR" in result.stderr


def test_without_artifact_the_registry_champion_is_served(tmp_path: Path) -> None:
    from mlci.registry import Registry

    artifact = make_artifact(tmp_path / "a", version=5, seed=5)
    db = tmp_path / "registry.db"
    with Registry(db) as registry:
        run = registry.create_run("key", params={}, environment={})
        registry.add_artifact(run.id, "model", artifact, artifact.name, 1)
        registry.finish_run(run.id)
        registry.promote_first(run.id, evidence={})
    with serving(None, tmp_path / "serve", f"registry.path={db}") as server:
        assert server.info["version"] == "5" and server.info["artifact"] == str(artifact)
        assert served_version(httpx.Client(base_url=server.url, timeout=30)) == "5"


def test_swap_under_traffic_drops_nothing_and_flips_once(tmp_path: Path) -> None:
    import threading

    v1 = make_artifact(tmp_path / "a", version=1, seed=1)
    v2 = make_artifact(tmp_path / "a", version=2, seed=2, hidden=(256, 256))
    with serving(v1, tmp_path / "serve") as server:
        seen: list[list[str]] = [[] for _ in range(4)]  # versions answered, per client in order
        failures: list[str] = []
        stop = threading.Event()

        def traffic(mine: list[str]) -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                for _ in range(20_000):  # bounded; stopped long before
                    if stop.is_set():
                        return
                    response = client.post("/v2/models/digits/infer", json=infer_body(3))
                    if response.status_code != 200:
                        failures.append(response.text)
                    else:
                        mine.append(response.json()["model_version"])

        users = [threading.Thread(target=traffic, args=(mine,)) for mine in seen]
        for u in users:
            u.start()
        try:
            time.sleep(0.5)
            response = httpx.post(f"{server.management_url}/manage/load", json={"artifact": str(v2)}, timeout=60)
            assert response.status_code == 200, response.text
            time.sleep(0.5)
        finally:
            stop.set()
            for u in users:
                u.join(timeout=60)
    assert not failures, failures[:3]
    for versions in seen:  # each client: version 1, then version 2 from the flip on, never back
        flip = versions.index("2")
        assert flip > 0 and set(versions[:flip]) == {"1"} and set(versions[flip:]) == {"2"}


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has a GPU: serving.device=cuda is valid here")
    result = run_serve("--artifact", str(make_artifact(tmp_path / "a")), "serving.device=cuda")
    assert result.returncode == 2 and "serving.device = 'cuda': no CUDA device is available here" in result.stderr
