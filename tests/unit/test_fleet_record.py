"""What a fleet run's rank 0 sends back is checked before the registry takes it: a whole artifact of this run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from artifact_factory import build_artifact
from mlci.config import load_config
from mlci.fleet_train import FleetTrainingFailed, record
from mlci.registry import Registry

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def setup(tmp_path: Path):
    config = load_config(ROOT / "mlci.toml", [f"registry.artifacts={tmp_path / 'store'}"])
    registry = Registry(tmp_path / "registry.db")
    run = registry.create_run("k", params={}, environment={})
    ref = build_artifact(tmp_path / "built", version=run.seq)
    result = tmp_path / "result"
    result.mkdir()
    for name in ("model.safetensors", "manifest.json"):
        shutil.copyfile(ref.path / name, result / name)
    manifest = json.loads((result / "manifest.json").read_text())
    manifest["run_id"] = run.id  # as the node packages it
    (result / "manifest.json").write_text(json.dumps(manifest))
    epochs = [{"epoch": 1, "loss": 0.9, "accuracy": 0.5}, {"epoch": 2, "loss": 0.4, "accuracy": 0.8}]
    metrics = {"epochs": epochs, "final": {"train_loss": 0.35, "train_accuracy": 0.85}}
    (result / "metrics.json").write_text(json.dumps(metrics))
    yield config, registry, run, result, ref
    registry.close()


def test_a_whole_result_is_stored_and_recorded(setup) -> None:
    config, registry, run, result, ref = setup
    record(config, registry, run, result)
    stored = registry.run(run.id)
    artifact = stored.artifact("model")
    assert artifact is not None and artifact.sha256 == ref.sha256
    assert Path(artifact.path) == Path(config.registry.artifacts) / ref.sha256
    assert (Path(artifact.path) / "model.safetensors").read_bytes() == (ref.path / "model.safetensors").read_bytes()
    assert registry.history(run.id, "train_loss") == [(1, 0.9), (2, 0.4)]
    assert stored.metrics["train_accuracy"] == 0.85


def test_weights_that_do_not_match_the_manifest_are_refused(setup) -> None:
    config, registry, run, result, _ = setup
    weights = result / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(FleetTrainingFailed, match="weights sha256"):
        record(config, registry, run, result)
    assert registry.run(run.id).artifact("model") is None
    assert not Path(config.registry.artifacts).exists()


def test_another_runs_artifact_is_refused(setup) -> None:
    config, registry, run, result, _ = setup
    manifest = json.loads((result / "manifest.json").read_text())
    manifest["run_id"] = "r9999"
    (result / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FleetTrainingFailed, match="manifest run r9999"):
        record(config, registry, run, result)


def test_a_missing_metrics_file_is_named(setup) -> None:
    config, registry, run, result, _ = setup
    (result / "metrics.json").unlink()
    with pytest.raises(FleetTrainingFailed, match=r"rank 0 sent no metrics\.json"):
        record(config, registry, run, result)
