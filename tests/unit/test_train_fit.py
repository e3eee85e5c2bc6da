"""The training library in-process, on the bundled digits data: standardization from the training split, the
smoke-test rows, determinism, and what the registry holds when training fails."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mlci import data, pipeline, train
from mlci.config import Config, load_config
from mlci.errors import ConfigError
from mlci.registry import Registry
from mlci.runkey import compute

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    shutil.copytree(ROOT / "data", tmp_path / "data")
    shutil.copy(ROOT / "mlci.toml", tmp_path / "mlci.toml")
    return load_config(tmp_path / "mlci.toml", ["train.epochs=1", "train.device=cpu"])


@pytest.fixture
def train_split(config: Config) -> data.Dataset:
    return data.split(data.check(config), config.data.eval_fraction, config.data.split_seed)[0]


def test_standardization_comes_from_the_training_split(config: Config, train_split: data.Dataset) -> None:
    fitted = train.fit(config, train_split)
    mean, std = fitted.model.standardize.mean.numpy(), fitted.model.standardize.std.numpy()
    x = train_split.x.astype(np.float64)
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-5, atol=1e-5)
    constant = x.std(axis=0) == 0
    assert constant.any(), "digits has always-blank pixels"
    assert (std[constant] == 1).all()
    np.testing.assert_allclose(std[~constant], x.std(axis=0)[~constant], rtol=1e-5)


def test_smoke_rows_are_one_real_training_row_per_class(train_split: data.Dataset) -> None:
    rows = train.smoke_rows(train_split)
    assert len(rows) == len(train_split.classes)
    for label, row in enumerate(rows):
        match = (train_split.x == np.asarray(row, dtype=np.float32)).all(axis=1)
        assert match.any() and label in train_split.y[match]


def test_same_inputs_same_weights(config: Config, train_split: data.Dataset) -> None:
    a, b = train.fit(config, train_split), train.fit(config, train_split)
    assert [s.loss for s in a.history] == [s.loss for s in b.history]
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    other = train.fit(load_config(config.root / "mlci.toml", ["train.epochs=1", "train.seed=1"]), train_split)
    assert not torch.equal(other.model.net[0].weight, a.model.net[0].weight)


def test_standardization_and_scoring_in_blocks_give_the_whole_arrays_figures(train_split: data.Dataset) -> None:
    """Bounded memory (a few columns, a batch of rows at a time) must not change the model's inputs."""
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, (20_000, 9)).astype(np.float32)
    mean, std = train.standardization(data.Dataset(list("abcdefghi"), [0], x, np.zeros(len(x), np.int64)))
    whole = x.astype(np.float64)
    assert mean.numpy().tobytes() == whole.mean(axis=0).astype(np.float32).tobytes()
    assert std.numpy().tobytes() == whole.std(axis=0).astype(np.float32).tobytes()
    model = train.fit(load_config(ROOT / "mlci.toml", ["train.epochs=1", "train.device=cpu"]), train_split).model
    loss, accuracy = train.score(model, train_split, batch_size=100)
    with torch.inference_mode():
        logits = model(torch.from_numpy(train_split.x))
    y = torch.from_numpy(train_split.y)
    assert loss == pytest.approx(float(torch.nn.functional.cross_entropy(logits, y)), rel=1e-5)
    assert accuracy == float((logits.argmax(1) == y).double().mean())


def test_a_bad_factory_records_no_run(config: Config, tmp_path: Path) -> None:
    bad = load_config(config.root / "mlci.toml", ["train.epochs=1", "model.params={ width = 3 }"])
    with Registry(tmp_path / "registry.db") as registry, pytest.raises(ConfigError, match=r"model\.params"):
        pipeline.train_run(bad, data.load_splits(bad)[0], registry, compute(bad, data.data_files(bad)))
    with Registry(tmp_path / "registry.db") as registry:
        assert registry.runs() == []


def test_a_failure_while_training_marks_the_run_failed(
    config: Config, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "exploding.py").write_text(
        "import torch\n\n"
        "class Boom(torch.nn.Linear):\n"
        "    def forward(self, x):\n"
        "        raise RuntimeError('the model exploded')\n\n"
        "def net(n_features, n_classes):\n"
        "    return Boom(n_features, n_classes)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = ["train.epochs=1", 'model.factory="exploding:net"', "model.params={}"]
    boom = load_config(config.root / "mlci.toml", overrides)
    with Registry(tmp_path / "registry.db") as registry:
        with pytest.raises(RuntimeError, match="exploded"):
            pipeline.train_run(boom, data.load_splits(boom)[0], registry, compute(boom, data.data_files(boom)))
        (run,) = registry.runs()
        assert run.status == "failed" and "the model exploded" in run.error and run.finished_at
        assert registry.find_run(run.key) is None, "a failed run is never reused"
