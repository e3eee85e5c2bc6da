"""Evaluate a run against the champion on the frozen evaluation split, with bootstrap confidence intervals.

Metrics: accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix. Intervals are percentile
bootstrap intervals (`evaluate.bootstrap` resamples of the evaluation rows, seeded by `evaluate.seed`); every
model scored in one call is resampled on the same rows, so differences between models are paired.

Conventions (as scikit-learn's defaults): a class never predicted has precision 0, a class absent from the
labels has recall 0, F1 is 0 when precision + recall is 0, and macro-F1 averages over the classes present in
the labels or the predictions of that (re)sample.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlci import gates as gates_mod
from mlci.config import Config
from mlci.errors import ArtifactError, DataError
from mlci.gates import GateResult

if TYPE_CHECKING:
    import numpy as np

    from mlci.data import Dataset
    from mlci.registry import Registry, Run

# Bootstrap indices are drawn in chunks of about this many cells, so memory stays bounded on big eval sets.
_CHUNK_CELLS = 4_000_000


# --- results ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interval:
    point: float
    low: float
    high: float

    def to_list(self) -> list[float]:
        return [self.point, self.low, self.high]

    @classmethod
    def from_list(cls, v: list[float]) -> Interval:
        return cls(float(v[0]), float(v[1]), float(v[2]))


@dataclass(frozen=True)
class ClassMetrics:
    label: str
    support: int  # rows of this class in the evaluation split
    precision: Interval
    recall: Interval
    f1: Interval


@dataclass(frozen=True)
class Metrics:
    run_id: str
    accuracy: Interval
    macro_f1: Interval
    per_class: list[ClassMetrics]
    confusion: list[list[int]]  # rows: true class, columns: predicted class

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "accuracy": self.accuracy.to_list(),
            "macro_f1": self.macro_f1.to_list(),
            "per_class": [
                {
                    "label": c.label,
                    "support": c.support,
                    "precision": c.precision.to_list(),
                    "recall": c.recall.to_list(),
                    "f1": c.f1.to_list(),
                }
                for c in self.per_class
            ],
            "confusion": self.confusion,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Metrics:
        return cls(
            run_id=d["run_id"],
            accuracy=Interval.from_list(d["accuracy"]),
            macro_f1=Interval.from_list(d["macro_f1"]),
            per_class=[
                ClassMetrics(
                    c["label"],
                    int(c["support"]),
                    Interval.from_list(c["precision"]),
                    Interval.from_list(c["recall"]),
                    Interval.from_list(c["f1"]),
                )
                for c in d["per_class"]
            ],
            confusion=[[int(v) for v in row] for row in d["confusion"]],
        )


@dataclass(frozen=True)
class Difference:
    """a - b on the same resampled rows (paired)."""

    a: str
    b: str
    accuracy: Interval
    macro_f1: Interval

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "accuracy": self.accuracy.to_list(), "macro_f1": self.macro_f1.to_list()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Difference:
        return cls(d["a"], d["b"], Interval.from_list(d["accuracy"]), Interval.from_list(d["macro_f1"]))


@dataclass(frozen=True)
class Evaluation:
    run_id: str
    champion_id: str | None  # the champion when evaluated (None: there was none)
    n_eval: int
    classes: list[str]
    confidence: float
    resamples: int
    seed: int
    candidate: Metrics
    champion: Metrics | None  # None when there is no champion or the candidate is the champion
    difference: Difference | None  # candidate - champion
    gates: list[GateResult] = field(default_factory=list)
    promoted: bool = False  # became the first champion

    @property
    def passed(self) -> bool:
        return all(g.passed for g in self.gates)

    @property
    def failed_gates(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "champion_id": self.champion_id,
            "n_eval": self.n_eval,
            "classes": self.classes,
            "confidence": self.confidence,
            "resamples": self.resamples,
            "seed": self.seed,
            "candidate": self.candidate.to_dict(),
            "champion": self.champion.to_dict() if self.champion else None,
            "difference": self.difference.to_dict() if self.difference else None,
            "gates": [g.to_dict() for g in self.gates],
            "passed": self.passed,
            "promoted": self.promoted,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evaluation:
        return cls(
            run_id=d["run_id"],
            champion_id=d["champion_id"],
            n_eval=int(d["n_eval"]),
            classes=list(d["classes"]),
            confidence=float(d["confidence"]),
            resamples=int(d["resamples"]),
            seed=int(d["seed"]),
            candidate=Metrics.from_dict(d["candidate"]),
            champion=Metrics.from_dict(d["champion"]) if d.get("champion") else None,
            difference=Difference.from_dict(d["difference"]) if d.get("difference") else None,
            gates=[GateResult.from_dict(g) for g in d["gates"]],
            promoted=bool(d.get("promoted", False)),
        )


# --- metrics --------------------------------------------------------------------------------------------


def confusion_matrix(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """[true, predicted] counts."""
    import numpy as np

    codes = np.asarray(y, dtype=np.int64) * n_classes + np.asarray(pred, dtype=np.int64)
    return np.bincount(codes, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _rates(tp: np.ndarray, n_pred: np.ndarray, n_true: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-class precision, recall, F1 and macro-F1 from counts; the last axis is the class."""
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(n_pred > 0, tp / np.maximum(n_pred, 1), 0.0)
        recall = np.where(n_true > 0, tp / np.maximum(n_true, 1), 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    present = (n_true > 0) | (n_pred > 0)
    macro = (f1 * present).sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)
    return precision, recall, f1, macro


def point_metrics(y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1 (arrays) and the confusion matrix of one prediction."""
    import numpy as np

    cm = confusion_matrix(y, pred, n_classes)
    tp, n_pred, n_true = np.diag(cm).astype(float), cm.sum(axis=0).astype(float), cm.sum(axis=1).astype(float)
    precision, recall, f1, macro = _rates(tp, n_pred, n_true)
    accuracy = float(np.trace(cm) / max(cm.sum(), 1))
    return {
        "accuracy": accuracy,
        "macro_f1": float(macro),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "confusion": cm,
    }


@dataclass(frozen=True)
class Samples:
    """One model's statistic on each bootstrap resample."""

    accuracy: np.ndarray  # [B]
    macro_f1: np.ndarray  # [B]
    precision: np.ndarray  # [B, k]
    recall: np.ndarray  # [B, k]
    f1: np.ndarray  # [B, k]


def bootstrap(
    y: np.ndarray, preds: Mapping[str, np.ndarray], n_classes: int, *, resamples: int, seed: int
) -> dict[str, Samples]:
    """Every model's statistics on the same `resamples` resamples (with replacement) of the rows: paired."""
    import numpy as np

    y = np.asarray(y, dtype=np.int64)
    preds = {name: np.asarray(pred, dtype=np.int64) for name, pred in preds.items()}
    n, k = len(y), n_classes
    if n == 0:
        raise DataError("<data>", "the evaluation split is empty")
    rng = np.random.default_rng(seed)
    # About _CHUNK_CELLS indices at a time: several resamples whole, or one resample in pieces of rows. The draws
    # come in the same order either way (resample after resample, row after row), so the numbers do not change.
    chunk = max(1, _CHUNK_CELLS // n)
    piece = min(n, _CHUNK_CELLS)
    parts: dict[str, list[tuple[np.ndarray, ...]]] = {name: [] for name in preds}
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        offset = (np.arange(b, dtype=np.int64) * k)[:, None]
        n_true = np.zeros(b * k, dtype=np.int64)
        counts = {name: [np.zeros(b, np.int64), np.zeros(b * k, np.int64), np.zeros(b * k, np.int64)] for name in preds}
        for row in range(0, n, piece):
            idx = rng.integers(0, n, size=(b, min(piece, n - row)))
            yb = y[idx]
            n_true += np.bincount((offset + yb).ravel(), minlength=b * k)
            for name, pred in preds.items():
                pb = pred[idx]
                hit = pb == yb
                hits, n_pred, tp = counts[name]
                hits += hit.sum(axis=1)
                n_pred += np.bincount((offset + pb).ravel(), minlength=b * k)
                tp += np.bincount((offset + yb)[hit], minlength=b * k)
        for name, (hits, n_pred, tp) in counts.items():
            precision, recall, f1, macro = _rates(
                tp.reshape(b, k).astype(float), n_pred.reshape(b, k).astype(float), n_true.reshape(b, k).astype(float)
            )
            parts[name].append((hits / n, macro, precision, recall, f1))
    return {
        name: Samples(*(np.concatenate([p[i] for p in chunks]) for i in range(5))) for name, chunks in parts.items()
    }


def interval(point: float, samples: np.ndarray, confidence: float) -> Interval:
    """Percentile interval: the (1-c)/2 and (1+c)/2 quantiles of the bootstrap distribution."""
    import numpy as np

    low, high = np.quantile(samples, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(float(point), float(low), float(high))


def summarize(
    run_id: str, y: np.ndarray, pred: np.ndarray, samples: Samples, classes: list[str], confidence: float
) -> Metrics:
    import numpy as np

    k = len(classes)
    pm = point_metrics(y, pred, k)
    support = np.bincount(np.asarray(y, dtype=np.int64), minlength=k)
    per_class = [
        ClassMetrics(
            label=classes[c],
            support=int(support[c]),
            precision=interval(pm["precision"][c], samples.precision[:, c], confidence),
            recall=interval(pm["recall"][c], samples.recall[:, c], confidence),
            f1=interval(pm["f1"][c], samples.f1[:, c], confidence),
        )
        for c in range(k)
    ]
    return Metrics(
        run_id=run_id,
        accuracy=interval(pm["accuracy"], samples.accuracy, confidence),
        macro_f1=interval(pm["macro_f1"], samples.macro_f1, confidence),
        per_class=per_class,
        confusion=pm["confusion"].tolist(),
    )


def difference(a: Metrics, sa: Samples, b: Metrics, sb: Samples, confidence: float) -> Difference:
    return Difference(
        a=a.run_id,
        b=b.run_id,
        accuracy=interval(a.accuracy.point - b.accuracy.point, sa.accuracy - sb.accuracy, confidence),
        macro_f1=interval(a.macro_f1.point - b.macro_f1.point, sa.macro_f1 - sb.macro_f1, confidence),
    )


# --- models on the evaluation split ---------------------------------------------------------------------


def eval_split(config: Config) -> Dataset:
    """The frozen evaluation split of the configured data (data.split_seed, data.eval_fraction)."""
    from mlci import data

    return data.load_splits(config)[1]  # the training rows' memory goes back on return


def predict(run: Run, ds: Dataset, *, batch_size: int = 4096) -> np.ndarray:
    """Class indices the run's model predicts for `ds.x` (CPU, fp32: the same numbers on every machine)."""
    import numpy as np
    import torch

    from mlci.artifacts import load_model

    artifact = run.artifact("model")
    if artifact is None:
        raise ArtifactError(f"run {run.id} has no model artifact (status {run.status}); nothing to evaluate")
    model, manifest = load_model(artifact.path)
    features = list(manifest["input"].get("features", []))
    if features and features != list(ds.features):
        raise ArtifactError(
            f"{artifact.path}: run {run.id}'s model expects features {_short(features)}, "
            f"the evaluation data has {_short(ds.features)}"
        )
    classes = [str(c) for c in manifest["output"].get("classes", [])]
    if classes and classes != [str(c) for c in ds.classes]:
        raise ArtifactError(
            f"{artifact.path}: run {run.id}'s model predicts classes {_short(classes)}, "
            f"the evaluation data has {_short(ds.classes)}"
        )
    x = torch.from_numpy(np.ascontiguousarray(ds.x, dtype=np.float32))
    out = []
    with torch.inference_mode():
        for start in range(0, len(x), batch_size):
            out.append(model(x[start : start + batch_size]).float().argmax(dim=1))
    return torch.cat(out).numpy().astype(np.int64)


def _short(items: list[Any], n: int = 5) -> str:
    shown = ", ".join(map(str, items[:n]))
    return f"[{shown}{', ...' if len(items) > n else ''}] ({len(items)})"


def score(
    config: Config, runs: list[Run], ds: Dataset | None = None
) -> tuple[Dataset, dict[str, Metrics], dict[str, Samples]]:
    """Metrics with intervals for each run on the evaluation split, all on the same (paired) resamples."""
    ds = eval_split(config) if ds is None else ds
    preds = {run.id: predict(run, ds) for run in runs}
    classes = [str(c) for c in ds.classes]
    e = config.evaluate
    samples = bootstrap(ds.y, preds, len(classes), resamples=e.bootstrap, seed=e.seed)
    metrics = {rid: summarize(rid, ds.y, preds[rid], samples[rid], classes, e.confidence) for rid in preds}
    return ds, metrics, samples


# --- the pipeline step ------------------------------------------------------------------------------------


def evaluate(config: Config, registry: Registry, run: Run, ds: Dataset | None = None) -> Evaluation:
    """Score the run and the current champion on `ds` (default: eval_split) and apply the gates. Stores and
    promotes nothing."""
    champion = registry.champion()
    others = [champion] if champion is not None and champion.id != run.id else []
    ds, metrics, samples = score(config, [run, *others], ds)
    cand = metrics[run.id]
    champ = metrics[others[0].id] if others else None
    diff = (
        difference(cand, samples[run.id], champ, samples[others[0].id], config.evaluate.confidence) if champ else None
    )
    verdicts = gates_mod.apply(
        config.gates,
        accuracy=cand.accuracy.point,
        macro_f1=cand.macro_f1.point,
        champion_id=champion.id if champion else None,
        diff=(diff.accuracy.point, diff.accuracy.low, diff.accuracy.high) if diff else None,
        confidence=config.evaluate.confidence,
    )
    return Evaluation(
        run_id=run.id,
        champion_id=champion.id if champion else None,
        n_eval=len(ds.y),
        classes=[str(c) for c in ds.classes],
        confidence=config.evaluate.confidence,
        resamples=config.evaluate.bootstrap,
        seed=config.evaluate.seed,
        candidate=cand,
        champion=champ,
        difference=diff,
        gates=verdicts,
    )


def headline(evaluation: Evaluation) -> dict[str, float]:
    """The figures logged as the run's final metrics."""
    c = evaluation.candidate
    out = {
        "eval_accuracy": c.accuracy.point,
        "eval_accuracy_low": c.accuracy.low,
        "eval_accuracy_high": c.accuracy.high,
        "eval_macro_f1": c.macro_f1.point,
        "eval_macro_f1_low": c.macro_f1.low,
        "eval_macro_f1_high": c.macro_f1.high,
        "gates_passed": float(evaluation.passed),
    }
    if evaluation.difference is not None:
        d = evaluation.difference.accuracy
        out |= {"vs_champion_accuracy": d.point, "vs_champion_low": d.low, "vs_champion_high": d.high}
    return out


def evaluate_run(config: Config, registry: Registry, run: Run, ds: Dataset | None = None) -> Evaluation:
    """Evaluate, store the result on the run, and make the run the first champion when there is none and it
    passed. Never replaces an existing champion (deploy does that)."""
    import dataclasses

    evaluation = evaluate(config, registry, run, ds)
    if evaluation.passed and evaluation.champion_id is None:
        evidence = {
            "gates": [g.to_dict() for g in evaluation.gates],
            "accuracy": evaluation.candidate.accuracy.to_list(),
            "macro_f1": evaluation.candidate.macro_f1.to_list(),
            "report": str(config.path(config.registry.reports) / run.id / "report.md"),
        }
        # Atomic "only if still vacant": another evaluation may have crowned a champion meanwhile.
        if registry.promote_first(run.id, evidence=evidence, outcome="first champion"):
            evaluation = dataclasses.replace(evaluation, promoted=True)
    registry.add_evaluation(run.id, evaluation.champion_id, evaluation.passed, evaluation.to_dict())
    registry.log_metrics(run.id, headline(evaluation))
    return evaluation


def stored(registry: Registry, run: Run) -> Evaluation | None:
    """The run's latest stored evaluation, or None."""
    row = registry.latest_evaluation(run.id)
    return Evaluation.from_dict(row["results"]) if row else None
