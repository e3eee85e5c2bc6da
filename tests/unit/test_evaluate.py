"""Metrics and bootstrap intervals of mlci.evaluate, checked against hand-computed figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mlci import evaluate as ev

# A tiny example worked by hand:
#   y    = 0 0 1 1 2 2
#   pred = 0 1 1 1 2 0
# confusion [true, predicted] = [[1,1,0],[0,2,0],[1,0,1]]
Y = np.array([0, 0, 1, 1, 2, 2])
PRED = np.array([0, 1, 1, 1, 2, 0])


def test_metrics_match_a_hand_computed_confusion_matrix() -> None:
    m = ev.point_metrics(Y, PRED, 3)
    assert m["confusion"].tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"].tolist() == pytest.approx([1 / 2, 2 / 3, 1.0])
    assert m["recall"].tolist() == pytest.approx([1 / 2, 1.0, 1 / 2])
    f1 = [0.5, 2 * (2 / 3) / (2 / 3 + 1), 2 * 0.5 / 1.5]  # 0.5, 0.8, 0.667
    assert m["f1"].tolist() == pytest.approx(f1)
    assert m["macro_f1"] == pytest.approx(sum(f1) / 3)


def test_classes_never_seen_follow_the_documented_conventions() -> None:
    # class 2 is never predicted (precision 0, F1 0, still averaged: it is in the labels);
    # class 3 is neither in the labels nor predicted (left out of macro-F1).
    y = np.array([0, 1, 2, 2])
    pred = np.array([0, 1, 0, 1])
    m = ev.point_metrics(y, pred, 4)
    assert m["precision"].tolist() == pytest.approx([0.5, 0.5, 0.0, 0.0])
    assert m["recall"].tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0])
    assert m["f1"].tolist() == pytest.approx([2 / 3, 2 / 3, 0.0, 0.0])
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)


def _noisy(seed: int, n: int = 400, k: int = 6, accuracy: float = 0.85) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < accuracy, y, rng.integers(0, k, n))
    return y, pred


def test_bootstrap_is_deterministic_for_a_seed_and_changes_with_it() -> None:
    y, pred = _noisy(1)
    a = ev.bootstrap(y, {"m": pred}, 6, resamples=200, seed=7)["m"]
    b = ev.bootstrap(y, {"m": pred}, 6, resamples=200, seed=7)["m"]
    c = ev.bootstrap(y, {"m": pred}, 6, resamples=200, seed=8)["m"]
    for field in ("accuracy", "macro_f1", "precision", "recall", "f1"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert not np.array_equal(a.accuracy, c.accuracy)


def test_bootstrap_does_not_depend_on_the_memory_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    y, pred = _noisy(2)
    whole = ev.bootstrap(y, {"m": pred}, 6, resamples=150, seed=3)["m"]
    monkeypatch.setattr(ev, "_CHUNK_CELLS", 1000)  # 2 resamples per chunk
    chunked = ev.bootstrap(y, {"m": pred}, 6, resamples=150, seed=3)["m"]
    assert np.array_equal(whole.macro_f1, chunked.macro_f1)
    assert np.array_equal(whole.f1, chunked.f1)


def _reference_bootstrap(y: np.ndarray, pred: np.ndarray, k: int, resamples: int, seed: int) -> np.ndarray:
    """The seeded bootstrap as first written, one whole resample at a time, with plain loops: [B, 2 + k]
    (accuracy, macro-F1, per-class F1), sklearn's conventions."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(resamples):
        idx = rng.integers(0, len(y), size=(1, len(y)))[0]
        yt, yp = y[idx].tolist(), pred[idx].tolist()
        f1s, present = [], 0
        for c in range(k):
            tp = sum(1 for a, b in zip(yt, yp, strict=True) if a == b == c)
            n_pred, n_true = yp.count(c), yt.count(c)
            p = tp / n_pred if n_pred else 0.0
            r = tp / n_true if n_true else 0.0
            f1s.append(2 * p * r / (p + r) if p + r else 0.0)
            present += bool(n_pred or n_true)
        acc = sum(1 for a, b in zip(yt, yp, strict=True) if a == b) / len(yt)
        macro = sum(f for c, f in enumerate(f1s) if c in yt or c in yp) / max(present, 1)
        out.append([acc, macro, *f1s])
    return np.array(out)


def test_bootstrap_in_pieces_of_rows_gives_the_first_implementations_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory is bounded whatever the eval split's size: one resample is drawn in pieces of rows. The numbers
    for a seed stay those of drawing each resample whole."""
    y, pred = _noisy(4, n=2500, k=5, accuracy=0.7)
    monkeypatch.setattr(ev, "_CHUNK_CELLS", 1000)  # one resample in 3 pieces (1000, 1000, 500 rows)
    got = ev.bootstrap(y, {"m": pred}, 5, resamples=30, seed=21)["m"]
    want = _reference_bootstrap(y, pred, 5, resamples=30, seed=21)
    np.testing.assert_allclose(got.accuracy, want[:, 0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.macro_f1, want[:, 1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.f1, want[:, 2:], rtol=0, atol=1e-12)


def test_each_resample_scores_like_the_point_metrics_of_those_rows() -> None:
    """The vectorized bootstrap agrees with the plain per-sample computation, resample by resample."""
    y, pred = _noisy(3, n=120, k=4, accuracy=0.6)
    samples = ev.bootstrap(y, {"m": pred}, 4, resamples=25, seed=11)["m"]
    idx = np.random.default_rng(11).integers(0, len(y), size=(25, len(y)))  # the same draw (one chunk)
    for j in range(25):
        m = ev.point_metrics(y[idx[j]], pred[idx[j]], 4)
        assert samples.accuracy[j] == pytest.approx(m["accuracy"])
        assert samples.macro_f1[j] == pytest.approx(m["macro_f1"])
        assert samples.f1[j] == pytest.approx(m["f1"])


@pytest.mark.parametrize("seed", range(5))
def test_intervals_contain_the_point_estimate(seed: int) -> None:
    y, pred = _noisy(seed)
    other = np.where(np.random.default_rng(seed + 100).random(len(y)) < 0.9, y, (y + 1) % 6)
    s = ev.bootstrap(y, {"a": pred, "b": other}, 6, resamples=500, seed=seed)
    classes = [str(c) for c in range(6)]
    a = ev.summarize("a", y, pred, s["a"], classes, 0.95)
    b = ev.summarize("b", y, other, s["b"], classes, 0.95)
    d = ev.difference(a, s["a"], b, s["b"], 0.95)
    for i in (a.accuracy, a.macro_f1, b.accuracy, b.macro_f1, d.accuracy, d.macro_f1):
        assert i.low <= i.point <= i.high
        assert i.low < i.high
    assert d.accuracy.point == pytest.approx(a.accuracy.point - b.accuracy.point)
    for c in a.per_class:
        assert c.f1.low <= c.f1.point <= c.f1.high


def test_paired_difference_of_a_model_with_itself_is_exactly_zero() -> None:
    y, pred = _noisy(4)
    s = ev.bootstrap(y, {"a": pred, "b": pred.copy()}, 6, resamples=300, seed=0)
    classes = [str(c) for c in range(6)]
    a = ev.summarize("a", y, pred, s["a"], classes, 0.95)
    b = ev.summarize("b", y, pred, s["b"], classes, 0.95)
    d = ev.difference(a, s["a"], b, s["b"], 0.95)
    assert (d.accuracy.point, d.accuracy.low, d.accuracy.high) == (0.0, 0.0, 0.0)


def test_a_wider_confidence_gives_a_wider_interval() -> None:
    y, pred = _noisy(5)
    s = ev.bootstrap(y, {"a": pred}, 6, resamples=500, seed=0)["a"]
    narrow = ev.interval(0.85, s.accuracy, 0.5)
    wide = ev.interval(0.85, s.accuracy, 0.99)
    assert wide.low < narrow.low and narrow.high < wide.high


def test_evaluation_survives_the_round_trip_through_json() -> None:
    import json

    from mlci.gates import GateResult

    y, pred = _noisy(6)
    s = ev.bootstrap(y, {"a": pred}, 6, resamples=50, seed=0)
    m = ev.summarize("r0001", y, pred, s["a"], [str(c) for c in range(6)], 0.95)
    e = ev.Evaluation(
        run_id="r0001", champion_id=None, n_eval=len(y), classes=[str(c) for c in range(6)], confidence=0.95,
        resamples=50, seed=0, candidate=m, champion=None, difference=None,
        gates=[GateResult("min_accuracy", "passed", 0.85, 0.8, "ok")], promoted=True,
    )  # fmt: skip
    back = ev.Evaluation.from_dict(json.loads(json.dumps(e.to_dict())))
    assert back == e
    assert back.passed


def test_an_empty_evaluation_split_is_a_data_error() -> None:
    from mlci.errors import DataError

    with pytest.raises(DataError, match="empty"):
        ev.bootstrap(np.array([], dtype=np.int64), {"a": np.array([], dtype=np.int64)}, 3, resamples=10, seed=0)


def test_only_the_first_passing_run_is_promoted_by_evaluation(tmp_path: Path) -> None:
    from mlci.registry import Registry

    with Registry(tmp_path / "registry.db") as registry:
        runs = []
        for _ in range(2):
            run = registry.create_run("k", params={}, environment={})
            registry.finish_run(run.id)
            runs.append(run.id)
        assert registry.promote_first(runs[0], evidence={"why": "first"})
        assert not registry.promote_first(runs[1], evidence={"why": "second"})
        assert registry.champion().id == runs[0]
        assert [(e.run_id, e.outcome) for e in registry.ledger()] == [(runs[0], "first champion")]
