"""Quality gates: absolute minimums and "not worse than the champion", each with a verdict that says why.

The rules (README: "Evaluation, gates and reports"):
- `min_accuracy`, `min_macro_f1`: the candidate's point estimate on the evaluation split must be >= the limit.
- `champion`: with d = candidate accuracy - champion accuracy, paired over the same bootstrap resamples of the
  evaluation rows, the gate fails when the upper end of d's two-sided `evaluate.confidence` interval is below
  -gates.max_drop_vs_champion: only when we are confident the candidate is worse by more than the allowed drop.
  Skipped when there is no champion yet or the candidate is the champion.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from mlci.config import GatesConfig

Status = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class GateResult:
    name: str
    status: Status
    value: float | None  # what was measured (None when skipped)
    limit: float | None  # what it was held against
    message: str  # one line: value, limit and the verdict's reason

    @property
    def passed(self) -> bool:
        return self.status != "failed"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GateResult:
        return cls(d["name"], d["status"], d["value"], d["limit"], d["message"])


def minimum(name: str, metric: str, value: float, limit: float) -> GateResult:
    ok = value >= limit
    verb = ">=" if ok else "<"
    return GateResult(name, "passed" if ok else "failed", value, limit, f"{metric} {value:.4f} {verb} {limit:.4f}")


def not_worse_than_champion(
    champion_id: str | None,
    diff_point: float | None,
    diff_low: float | None,
    diff_high: float | None,
    max_drop: float,
    confidence: float,
) -> GateResult:
    """The champion gate on the paired-bootstrap accuracy difference (candidate - champion)."""
    name = "champion"
    if champion_id is None or diff_point is None or diff_low is None or diff_high is None:
        why = "no champion yet" if champion_id is None else f"the candidate is the champion ({champion_id})"
        return GateResult(name, "skipped", None, -max_drop, f"skipped: {why}")
    pct = f"{confidence:.0%}"
    shown = f"accuracy - champion {champion_id} = {diff_point:+.4f} ({pct} CI {diff_low:+.4f} .. {diff_high:+.4f})"
    if diff_high < -max_drop:
        return GateResult(
            name,
            "failed",
            diff_high,
            -max_drop,
            f"{shown}: upper bound {diff_high:+.4f} < {-max_drop:+.4f}, "
            f"worse than the champion by more than {max_drop:g} at {pct} confidence",
        )
    return GateResult(
        name, "passed", diff_high, -max_drop, f"{shown}: upper bound {diff_high:+.4f} >= {-max_drop:+.4f}"
    )


def apply(
    gates: GatesConfig,
    *,
    accuracy: float,
    macro_f1: float,
    champion_id: str | None,
    diff: tuple[float, float, float] | None,
    confidence: float,
) -> list[GateResult]:
    """Every gate's verdict, in a fixed order. `diff` is (point, low, high) of candidate - champion accuracy."""
    point, low, high = diff if diff is not None else (None, None, None)
    return [
        minimum("min_accuracy", "accuracy", accuracy, gates.min_accuracy),
        minimum("min_macro_f1", "macro-F1", macro_f1, gates.min_macro_f1),
        not_worse_than_champion(champion_id, point, low, high, gates.max_drop_vs_champion, confidence),
    ]
