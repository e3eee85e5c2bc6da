"""The train/eval split: deterministic, stratified, a partition, and frozen (pinned by a golden digest)."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlci.config import Config, config_from_dict
from mlci.data import Dataset, check, split
from mlci.errors import DataError

ROOT = Path(__file__).resolve().parents[2]


def bundled_config() -> Config:
    """The bundled data and schema, whatever else the repository's mlci.toml says today."""
    raw = {"data": {"files": ["data/digits.csv"], "schema": "data/schema.toml"}}
    return dataclasses.replace(config_from_dict(raw), root=ROOT)


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return check(bundled_config())


def digest(ds: Dataset) -> str:
    return hashlib.sha256(ds.x.astype("<f4").tobytes() + ds.y.astype("<i8").tobytes()).hexdigest()


def rows(ds: Dataset) -> Counter[bytes]:
    return Counter(ds.x[i].tobytes() + ds.y[i].tobytes() for i in range(len(ds)))


def test_check_returns_the_documented_shapes(digits: Dataset) -> None:
    assert len(digits) == 1797
    assert digits.x.dtype == np.float32 and digits.x.shape == (1797, 64)
    assert digits.y.dtype == np.int64 and digits.y.shape == (1797,)
    assert digits.features[:2] == ["px_0_0", "px_0_1"] and digits.features[-1] == "px_7_7"
    assert digits.classes == list(range(10))
    assert digits.x.min() == 0 and digits.x.max() == 16


def test_same_inputs_same_split(digits: Dataset) -> None:
    a_train, a_eval = split(digits, 0.2, 7)
    b_train, b_eval = split(digits, 0.2, 7)
    assert digest(a_train) == digest(b_train) and digest(a_eval) == digest(b_eval)


def test_another_seed_another_split(digits: Dataset) -> None:
    assert digest(split(digits, 0.2, 7)[1]) != digest(split(digits, 0.2, 8)[1])


def test_split_is_frozen(digits: Dataset) -> None:
    """Pinned: a change here silently changes every model's eval set, so it must be deliberate."""
    train, evaluation = split(digits, 0.2, 20261126)
    assert (len(train), len(evaluation)) == (1438, 359)
    assert digest(train)[:16] == "e29574e822e96aab"
    assert digest(evaluation)[:16] == "fd3c9d11dc255804"


def test_split_is_a_stratified_partition(digits: Dataset) -> None:
    train, evaluation = split(digits, 0.25, 3)
    assert rows(train) + rows(evaluation) == rows(digits)
    assert not set(rows(train)) & set(rows(evaluation))
    for label, n in Counter(digits.y.tolist()).items():
        got = int((evaluation.y == label).sum())
        assert abs(got - 0.25 * n) <= 1, (label, got, n)
    assert train.features == digits.features and train.classes == digits.classes


def test_split_does_not_depend_on_row_order(digits: Dataset) -> None:
    order = np.random.default_rng(0).permutation(len(digits))
    shuffled = digits.subset(order)
    assert rows(split(shuffled, 0.2, 5)[1]) == rows(split(digits, 0.2, 5)[1])


def test_appending_rows_keeps_most_assignments(digits: Dataset) -> None:
    head = digits.subset(np.arange(1500))
    before = set(rows(split(head, 0.2, 1)[1]))
    after = set(rows(split(digits, 0.2, 1)[1]))
    assert len(before & after) >= 0.9 * len(before)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_fraction(digits: Dataset, fraction: float) -> None:
    with pytest.raises(ValueError, match="eval_fraction"):
        split(digits, fraction, 0)


def test_too_few_rows_to_split() -> None:
    ds = Dataset(["a"], [0, 1], np.zeros((2, 1), dtype=np.float32), np.array([0, 1], dtype=np.int64))
    with pytest.raises(DataError, match="too few rows"):
        split(ds, 0.5, 0)


@settings(max_examples=40, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=4, max_size=60),
    fraction=st.floats(0.05, 0.95),
    seed=st.integers(-(2**40), 2**40),
)
def test_split_properties(labels: list[int], fraction: float, seed: int) -> None:
    y = np.array(labels, dtype=np.int64)
    x = np.arange(len(y) * 2, dtype=np.float32).reshape(len(y), 2)
    ds = Dataset(["a", "b"], [0, 1, 2, 3, 4], x, y)
    if all(n < 2 for n in Counter(labels).values()):
        return  # nothing can go to eval; covered by the error path
    train, evaluation = split(ds, fraction, seed)
    assert len(train) + len(evaluation) == len(ds) and len(train) and len(evaluation)
    assert rows(train) + rows(evaluation) == rows(ds)
    for label, n in Counter(labels).items():
        got = int((evaluation.y == label).sum())
        if n >= 2:
            assert 1 <= got <= n - 1
            assert abs(got - fraction * n) <= 1
        else:
            assert got == 0
