"""/manage/load refuses an artifact that does not match the served model: a real `mlci serve` process.

Another signature (model name, inputs, outputs) without `"signature_change": true`, or a model factory that
serving.factories does not allow: 422, and the first model keeps serving. A disallowed factory at startup:
exit 2 before its module is imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from artifact_factory import build_artifact, foreign_factory_module, with_factory
from serve_process import CONFIG, serving

ROW = [3.0] * 64


def infer(client: httpx.Client, row: list[float] = ROW) -> httpx.Response:
    body = {"inputs": [{"name": "input", "shape": [1, len(row)], "datatype": "FP32", "data": row}]}
    return client.post("/v2/models/digits/infer", json=body)


def assert_still_serving_version_1(client: httpx.Client) -> None:
    meta = client.get("/v2/models/digits")
    assert meta.status_code == 200 and meta.json()["versions"] == ["1"], meta.text
    assert meta.json()["inputs"][0]["shape"] == [-1, 64] and meta.json()["outputs"][0]["shape"] == [-1, 10]
    answer = infer(client)
    assert answer.status_code == 200 and answer.json()["model_version"] == "1", answer.text
    assert len(answer.json()["outputs"][0]["data"]) == 10


def test_load_refuses_another_signature_or_a_foreign_factory_and_the_first_model_keeps_serving(
    tmp_path: Path,
) -> None:
    mark = foreign_factory_module(tmp_path / "modules")
    v1 = build_artifact(tmp_path / "a", version=1, seed=1, hidden=(16,)).path
    nine_classes = build_artifact(tmp_path / "a", version=2, seed=2, hidden=(16,), classes=list(range(9))).path
    v3 = build_artifact(tmp_path / "a", version=3, seed=3, hidden=(16,)).path
    foreign = with_factory(v3, tmp_path / "foreign", "foreign_factory:mlp")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "modules"), os.environ.get("PYTHONPATH", "")])}
    with serving(v1, tmp_path / "serve", env=env) as server:
        api = httpx.Client(base_url=server.management_url, timeout=60)
        client = httpx.Client(base_url=server.url, timeout=30)
        assert_still_serving_version_1(client)

        refused = api.post("/manage/load", json={"artifact": str(nine_classes)})
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert "signature differs from the served model version 1" in error and "output.classes" in error, error
        assert refused.json()["status"]["current"]["version"] == "1"
        assert_still_serving_version_1(client)

        refused = api.post("/manage/load", json={"artifact": str(foreign), "signature_change": True})
        assert refused.status_code == 422, refused.text
        assert "model.factory = 'foreign_factory:mlp'" in refused.json()["error"]
        assert "serving.factories: 'mlci.model:mlp'" in refused.json()["error"]
        assert not mark.exists(), "the foreign factory's module was imported"
        assert_still_serving_version_1(client)

        bad = api.post("/manage/load", json={"artifact": str(nine_classes), "signature_change": "yes"})
        assert bad.status_code == 400 and "signature_change" in bad.json()["error"]

        # Said explicitly: the new signature is served.
        changed = api.post("/manage/load", json={"artifact": str(nine_classes), "signature_change": True})
        assert changed.status_code == 200 and changed.json()["current"]["version"] == "2", changed.text
        assert client.get("/v2/models/digits").json()["outputs"][0]["shape"] == [-1, 9]
        assert len(infer(client).json()["outputs"][0]["data"]) == 9


def test_a_foreign_factory_at_startup_is_exit_2_before_it_is_imported(tmp_path: Path) -> None:
    mark = foreign_factory_module(tmp_path / "modules")
    foreign = with_factory(
        build_artifact(tmp_path / "a", hidden=(16,)).path, tmp_path / "foreign", "foreign_factory:mlp"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "modules"), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "mlci", "serve", "--config", str(CONFIG), "--artifact", str(foreign)]
    proc = subprocess.run(
        [*cmd, "serving.port=0", "serving.management_port=0"], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Error: " in proc.stderr and "model.factory = 'foreign_factory:mlp'" in proc.stderr, proc.stderr
    assert "serving.factories" in proc.stderr
    assert not mark.exists()
    # The same artifact with its factory allowed starts (the refusal above was the allow-list).
    with serving(foreign, tmp_path / "serve", 'serving.factories=["foreign_factory:mlp"]', env=env) as server:
        assert httpx.get(f"{server.url}/v2/health/ready", timeout=30).status_code == 200
    assert mark.exists()


def test_serving_factories_entries_must_name_a_function() -> None:
    from mlci.config import config_from_dict
    from mlci.errors import ConfigError

    assert config_from_dict({}).serving.factories == []
    why = r"serving.factories = \['mlci.model'\]: every entry must be 'module:function'"
    with pytest.raises(ConfigError, match=why):
        config_from_dict({"serving": {"factories": ["mlci.model"]}})


def test_the_deploy_agent_swaps_a_same_signature_model_and_reports_a_refused_one(tmp_path: Path) -> None:
    import json

    v1 = build_artifact(tmp_path / "host" / "artifacts", version=1, seed=1, hidden=(16,))
    v2 = build_artifact(tmp_path / "host" / "artifacts", version=2, seed=2, hidden=(16,))
    other = build_artifact(tmp_path / "host" / "artifacts", version=3, seed=3, hidden=(16,), classes=list(range(9)))
    with serving(v1.path, tmp_path / "serve") as server:
        port = server.management_url.rsplit(":", 1)[1]

        def agent(sha: str) -> subprocess.CompletedProcess[str]:
            cmd = [sys.executable, "-m", "mlci.deploy.agent", "swap", "--root", str(tmp_path / "host")]
            return subprocess.run([*cmd, "--sha", sha, "--management-port", port], capture_output=True, text=True)

        swapped = agent(v2.sha256)
        assert swapped.returncode == 0, swapped.stdout + swapped.stderr
        assert json.loads(swapped.stdout)["status"]["current"]["version"] == "2"
        refused = agent(other.sha256)
        assert refused.returncode == 1 and "HTTP 422" in refused.stdout and "output.classes" in refused.stdout
        client = httpx.Client(base_url=server.url, timeout=30)
        assert infer(client).json()["model_version"] == "2"
