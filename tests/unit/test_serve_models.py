"""Loading artifacts for serving (real safetensors artifacts) and the hot-swap manager's state changes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
import torch

from artifact_factory import FEATURES, break_smoke_test, corrupt_one_byte, foreign_factory_module, with_factory
from mlci.artifacts import load_model
from mlci.errors import ArtifactError
from mlci.serve import loaded
from mlci.serve.manager import ModelManager
from mlci.serve.metrics import Metrics


@pytest.mark.parametrize("jit", [True, False])
def test_served_model_matches_the_eager_model(make_artifact, jit: bool) -> None:
    ref = make_artifact()
    model = loaded.load(ref.path, jit=jit)
    eager, _ = load_model(ref.path)
    x = np.random.default_rng(0).uniform(0, 16, (9, 64)).astype(np.float32)
    with torch.no_grad():
        expected = eager(torch.from_numpy(x)).numpy()
    assert np.allclose(model.predict(x), expected, atol=1e-5)
    assert isinstance(model.module, torch.jit.ScriptModule) == jit
    assert model.version == "1" and model.sha256 == ref.sha256


def test_one_changed_byte_is_refused_naming_the_sha256(make_artifact, tmp_path: Path) -> None:
    bad = corrupt_one_byte(make_artifact().path, tmp_path / "bad")
    with pytest.raises(ArtifactError, match=r"sha256 .* does not match the manifest's .*refusing to load"):
        loaded.load(bad)


def test_a_failing_smoke_test_is_refused(make_artifact, tmp_path: Path) -> None:
    bad = break_smoke_test(make_artifact().path, tmp_path / "bad")
    with pytest.raises(ArtifactError, match="smoke test failed"):
        loaded.load(bad)


def test_not_an_artifact_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not an artifact directory"):
        loaded.load(tmp_path / "missing")
    with pytest.raises(ArtifactError, match="no manifest"):
        loaded.load(tmp_path)


def test_swap_keeps_the_previous_model_and_refusals_change_nothing(make_artifact, tmp_path: Path) -> None:
    v1, v2 = make_artifact(version=1, seed=1), make_artifact(version=2, seed=2)
    other_v2 = make_artifact(version=2, seed=3)
    corrupt = corrupt_one_byte(make_artifact(version=3, seed=4).path, tmp_path / "corrupt")
    metrics = Metrics("digits")

    async def main() -> None:
        m = ModelManager("digits", metrics, warm_rows=(1, 4))
        await m.load(v1.path)
        status = await m.load(v2.path)
        assert status["current"]["version"] == "2" and status["previous"]["version"] == "1"
        assert m.get("1") is not None and m.get("2") is m.current and m.get("3") is None
        assert metrics.model_version._value.get() == 2

        with pytest.raises(ArtifactError, match="sha256"):
            await m.load(corrupt)
        with pytest.raises(ArtifactError, match="version 2 is already loaded with other weights"):
            await m.load(other_v2.path)
        with pytest.raises(ArtifactError, match="is not the expected"):
            await m.load(v1.path, sha256="0" * 64)
        assert m.current is not None and m.current.sha256 == v2.sha256
        assert m.status()["last_error"] and m.loading is None

        assert m.rollback()["current"]["version"] == "1"
        assert m.rollback()["current"]["version"] == "2"  # rollback toggles

    asyncio.run(main())


def test_an_artifact_with_another_signature_is_refused_unless_the_load_says_so(make_artifact) -> None:
    v1 = make_artifact(version=1, seed=1)
    others = {
        "model_name = 'letters' (served: 'digits')": make_artifact(version=2, seed=2, model_name="letters"),
        "input.features = ": make_artifact(version=3, seed=3, features=[*FEATURES[:-1], "px_extra"]),
        "input.shape = [-1, 65] (served: [-1, 64])": make_artifact(version=4, seed=4, features=[*FEATURES, "x"]),
        "output.classes = [0, 1, 2, 3, 4, 5, 6, 7, 8]": make_artifact(version=5, seed=5, classes=list(range(9))),
    }

    async def main() -> None:
        m = ModelManager("digits", Metrics("digits"), warm_rows=(1,))
        await m.load(v1.path)
        for needle, other in others.items():
            with pytest.raises(ArtifactError, match="signature differs from the served model version 1") as info:
                await m.load(other.path)
            assert needle in str(info.value) and '"signature_change": true' in str(info.value)
            assert m.current is not None and m.current.version == "1" and m.previous is None
        status = await m.load(others["output.classes = [0, 1, 2, 3, 4, 5, 6, 7, 8]"].path, signature_change=True)
        assert status["current"]["version"] == "5" and m.current is not None and m.current.signature.n_classes == 9
        assert (await m.load(v1.path, signature_change=True))["current"]["version"] == "1"

    asyncio.run(main())


def test_a_model_factory_not_allowed_is_refused_before_it_is_imported(
    make_artifact, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mark = foreign_factory_module(tmp_path / "modules")
    monkeypatch.syspath_prepend(str(tmp_path / "modules"))
    v1 = make_artifact(version=1, seed=1)
    foreign = with_factory(make_artifact(version=2, seed=2).path, tmp_path / "foreign", "foreign_factory:mlp")

    async def main() -> None:
        m = ModelManager("digits", Metrics("digits"), warm_rows=(1,), factories=("mlci.model:mlp",))
        await m.load(v1.path)
        with pytest.raises(ArtifactError, match=r"model.factory = 'foreign_factory:mlp' is not a factory this server"):
            await m.load(foreign)
        assert not mark.exists() and m.current is not None and m.current.version == "1"
        with pytest.raises(ArtifactError, match=r"serving.factories: 'mlci.model:mlp'"):
            loaded.load(foreign, factories=("mlci.model:mlp",))  # the first load (server start) too
        assert not mark.exists()
        # Allowed, the same artifact loads (and its module is imported): the refusal above was the allow-list.
        allowing = ModelManager("digits", Metrics("digits"), warm_rows=(1,), factories=("foreign_factory:mlp",))
        assert (await allowing.load(foreign))["current"]["version"] == "2"
        assert mark.exists()

    asyncio.run(main())


def test_rollback_without_a_previous_model_is_refused(make_artifact) -> None:
    async def main() -> None:
        m = ModelManager("digits", Metrics("digits"), warm_rows=(1,))
        await m.load(make_artifact().path)
        with pytest.raises(ArtifactError, match="no previous model"):
            m.rollback()

    asyncio.run(main())
